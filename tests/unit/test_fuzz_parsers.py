"""Fuzzing the parsers of files others write (envlock.lock, pyproject.toml, and the pipenv and PDM files `envlock
init` imports): any text gives a value or an EnvlockError, nothing else."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envlock.errors import EnvlockError
from envlock.lock import lockfile
from envlock.lock.importers import import_file
from envlock.lock.spec import load_spec
from tests.unit.test_lockfile import make_lock

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PROJECT = Path(tempfile.mkdtemp(prefix="envlock-fuzz-"))
LOCK_TEXT = lockfile.dumps(make_lock())
PYPROJECT = """[project]
name = "demo"
dependencies = ["numpy>=2", "requests"]
[project.optional-dependencies]
gpu = ["torch"]
[dependency-groups]
dev = ["pytest", {include-group = "lint"}]
lint = ["ruff"]
[tool.envlock]
python = "3.11"
platforms = ["linux/amd64"]
extras = ["gpu"]
groups = ["dev"]
index-url = "https://pypi.org/simple"
extra-index-urls = ["https://u:${TOKEN}@example.org/simple"]
system-packages = ["libgomp1"]
cuda = "auto"
"""
IMPORTS = Path(__file__).parents[1] / "data" / "imports"
PDM_PROJECT = {"tool": {"pdm": {"source": [{"name": "pypi", "url": "https://${U}:${T}@mirror.example/simple"}]}}}
# JSON values that are wrong in most places of a Pipfile.lock.
JSON_VALUES = st.sampled_from(
    [
        None, True, 0, -1, 1.5, "", "*", "==", "==1.0 ; (", "===1", "../../victim", "/abs", "${", "$X", "x" * 3000,
        [], ["a", 1], {}, {"path": "../../etc"}, {"path": "."}, {"git": 1}, {"version": 5}, {"file": ""},
        {"url": "https://u:p@h:x/"}, {"url": "ftp://h/"}, {"name": "n", "url": "https://h/simple", "verify_ssl": 0},
    ]
)  # fmt: skip
# TOML values that are wrong in most places: wrong types, deep nesting, hostile strings.
VALUES = st.sampled_from(
    [
        "5", "-1", "true", "1e400", '""', '"../../victim"', '"/abs/victim"', '"sha256:xyz"', "[]", "[1]", "{}",
        '{a = 1}', '"https://pyp].org/simple"', '"https://u:p@h:x/"', "1979-05-27T07:32:00Z", "[" * 300 + "]" * 300,
        '"\\u0000"', '"' + "a" * 5000 + '"', "1000000000000", '"3.11"', '"linux/amd64"', '"' + "0" * 64 + '"',
    ]
)  # fmt: skip


def mutate(text: str, data: st.DataObject) -> str:
    """The text with some `key = value` lines' values replaced, some lines dropped or duplicated."""
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["value", "drop", "dup", "header"]))
        line = lines[index]
        if action == "value" and " = " in line:
            lines[index] = line.split(" = ", 1)[0] + " = " + data.draw(VALUES)
        elif action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, line)
        elif action == "header":
            lines.insert(index, data.draw(st.sampled_from(["[meta]", "[targets]", "[[x]]", "[tool]", "[project]"])))
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


def parse_lock(text: str) -> None:
    with contextlib.suppress(EnvlockError):
        lockfile.loads(text)


def parse_pyproject(text: str) -> None:
    (PROJECT / "pyproject.toml").write_text(text, encoding="utf-8")
    with contextlib.suppress(EnvlockError):
        load_spec(PROJECT)


@FUZZ
@given(st.text(max_size=400))
def test_lock_parser_on_any_text(text: str) -> None:
    parse_lock(text)


@FUZZ
@given(st.data())
def test_lock_parser_on_mutated_locks(data: st.DataObject) -> None:
    parse_lock(mutate(LOCK_TEXT, data))


@FUZZ
@given(st.text(max_size=400))
def test_pyproject_parser_on_any_text(text: str) -> None:
    parse_pyproject(text)


@FUZZ
@given(st.data())
def test_pyproject_parser_on_mutated_projects(data: st.DataObject) -> None:
    parse_pyproject(mutate(PYPROJECT, data))


def mutate_json(document: Any, data: st.DataObject) -> Any:
    """The document with some values anywhere in it replaced or deleted."""
    for _ in range(data.draw(st.integers(1, 4))):
        node: Any = document
        parent: Any = None
        key: Any = None
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, data.draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            continue
        if data.draw(st.booleans()) or not isinstance(parent, dict):
            parent[key] = json.loads(json.dumps(data.draw(JSON_VALUES)))  # a copy: later steps may edit it
        else:
            del parent[key]
    return document


def parse_import(name: str, text: str, project: dict[str, Any] | None = None) -> None:
    folder = PROJECT / "imports"
    folder.mkdir(exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    (folder / name).write_text(text, encoding="utf-8")
    with contextlib.suppress(EnvlockError):
        import_file(folder / name, project or {})


@FUZZ
@given(st.sampled_from(["Pipfile.lock", "Pipfile", "pdm.lock"]), st.text(max_size=400))
def test_pipenv_and_pdm_importers_on_any_text(name: str, text: str) -> None:
    parse_import(name, text, PDM_PROJECT)


@FUZZ
@given(st.data())
def test_pipfile_lock_importer_on_mutated_locks(data: st.DataObject) -> None:
    document = json.loads((IMPORTS / "Pipfile.lock").read_text())
    parse_import("Pipfile.lock", json.dumps(mutate_json(document, data)))


@FUZZ
@given(st.sampled_from(["Pipfile", "pdm.lock"]), st.data())
def test_pipfile_and_pdm_lock_importers_on_mutated_files(name: str, data: st.DataObject) -> None:
    project = mutate_json(json.loads(json.dumps(PDM_PROJECT)), data) if name == "pdm.lock" else None
    parse_import(name, mutate((IMPORTS / name).read_text(), data), project)
