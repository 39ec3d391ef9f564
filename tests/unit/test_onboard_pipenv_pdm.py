"""`envlock init` from pipenv (Pipfile.lock, a bare Pipfile) and PDM (pdm.lock with [[tool.pdm.source]])."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.errors import ImportSourceError
from envlock.lock.importers import SOURCES, detect, import_file
from envlock.lock.onboard import init_project
from envlock.lock.spec import load_spec

IMPORTS = Path(__file__).parents[1] / "data" / "imports"
BROKEN = IMPORTS / "broken"
PROJECT = {"project": {"name": "demo", "version": "0", "dependencies": ["requests"]}}


def _envlock(project: Path) -> dict[str, object]:
    table: dict[str, object] = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["envlock"]
    return table


def test_pipfile_lock_default_pins_constrain_develop_only_bounds_and_the_pipfile_says_the_wishes(
    tmp_path: Path,
) -> None:
    shutil.copy(IMPORTS / "Pipfile.lock", tmp_path)
    shutil.copy(IMPORTS / "Pipfile", tmp_path)
    imported = import_file(tmp_path / "Pipfile.lock", {})
    assert imported.pins_from_lock and imported.python == "3.11"
    assert imported.constraints == [
        "colorama==0.4.6 ; sys_platform == 'win32'",
        "idna==3.10",
        "pysocks==1.7.1",
        "requests==2.32.3 ; python_version >= '3.8'",
        "iniconfig==2.0.0 ; python_version >= '3.7'",  # develop: bounds versions, installs nothing
        "pytest==8.3.4 ; python_version >= '3.8'",
    ], "develop's idna==3.8 gives way to default's 3.10 (two pins of one name would make the lock unsolvable)"
    assert imported.requirements == [
        "requests[socks]>=2.31",
        "idna==3.10",
        'colorama; sys_platform == "win32"',
    ], "the Pipfile's [packages], not its dev-packages"
    assert imported.not_handled == [
        "mylib (Pipfile.lock: default.mylib: a git source; envlock locks index packages with per-file hashes)"
    ]
    assert any("develop section (3 packages) is not installed" in note for note in imported.notes)
    assert imported.index_url == "https://pypi.org/simple" and imported.extra_index_urls == []


def test_pipfile_lock_without_its_pipfile_wishes_the_default_pins_and_project_dependencies_win(tmp_path: Path) -> None:
    shutil.copy(IMPORTS / "Pipfile.lock", tmp_path)
    alone = import_file(tmp_path / "Pipfile.lock", {})
    assert alone.requirements == alone.constraints[:4], "the default section's pins, as poetry.lock's main group"
    with_project = import_file(tmp_path / "Pipfile.lock", PROJECT)
    assert with_project.requirements == [], "[project].dependencies stay the wishes"


def test_a_pipfile_newer_than_its_lock_says_which_packages_are_resolved_afresh(tmp_path: Path) -> None:
    shutil.copy(IMPORTS / "Pipfile.lock", tmp_path)
    pipfile = (IMPORTS / "Pipfile").read_text().replace("[packages]\n", '[packages]\ntabulate = "*"\n')
    (tmp_path / "Pipfile").write_text(pipfile)
    imported = import_file(tmp_path / "Pipfile.lock", {})
    assert "tabulate" in imported.requirements
    assert any(note.startswith("Pipfile names tabulate, which Pipfile.lock does not pin") for note in imported.notes)


def test_init_from_a_pipfile_lock_writes_constraints_python_and_imported_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(IMPORTS / "Pipfile.lock", tmp_path)
    shutil.copy(IMPORTS / "Pipfile", tmp_path)
    assert run(["init", "-C", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "+ constraints: requests==2.32.3 ; python_version >= '3.8'" in out
    assert "not handled: mylib (Pipfile.lock: default.mylib: a git source" in out
    table = _envlock(tmp_path)
    assert table["python"] == "3.11" and table["imported-from"]["path"] == "Pipfile.lock"  # type: ignore[index]
    spec = load_spec(tmp_path)
    assert "idna==3.10" in spec.constraints and "requests[socks]>=2.31" in spec.requirements
    assert run(["init", "-C", str(tmp_path)]) == 0
    assert "nothing changed" in capsys.readouterr().out


def test_a_bare_pipfile_is_a_wish_list(tmp_path: Path) -> None:
    shutil.copy(IMPORTS / "Pipfile", tmp_path)
    assert detect(tmp_path) == tmp_path / "Pipfile"
    outcome = init_project(tmp_path)
    assert outcome.imported is not None and not outcome.imported.pins_from_lock
    table = _envlock(tmp_path)
    assert table["requirements"] == ["requests[socks]>=2.31", "idna==3.10", 'colorama; sys_platform == "win32"']
    assert "constraints" not in table and table["python"] == "3.11"
    assert outcome.imported.not_handled == [
        "mylib (Pipfile: packages.mylib: a git source; envlock locks index packages with per-file hashes)"
    ]
    assert any("dev-packages (1) are not installed" in note for note in outcome.imported.notes)


@pytest.mark.parametrize(
    ("value", "wish"),
    [
        ('"*"', "torch"),
        ('"2.5.1"', "torch==2.5.1"),
        ('"~=2.5"', "torch~=2.5"),
        ('{version = ">=2", markers = "python_version >= \'3.10\'", platform_machine = "== \'x86_64\'"}',
         'torch>=2; python_version >= "3.10" and platform_machine == "x86_64"'),
        ('{version = "*", index = "pytorch"}', "torch"),
    ],
)  # fmt: skip
def test_pipfile_versions_and_markers_in_pep508(tmp_path: Path, value: str, wish: str) -> None:
    (tmp_path / "Pipfile").write_text(f"[packages]\ntorch = {value}\n")
    assert import_file(tmp_path / "Pipfile", {}).requirements == [wish]


def test_pipenv_path_entries_are_local_packages_or_the_project_itself(tmp_path: Path) -> None:
    package = '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n[project]\nname = "{}"\n'
    (tmp_path / "pyproject.toml").write_text(package.format("demo") + 'version = "1"\n')
    (tmp_path / "libs" / "helper").mkdir(parents=True)
    (tmp_path / "libs" / "helper" / "pyproject.toml").write_text(package.format("helper") + 'version = "2"\n')
    lock = {
        "_meta": {"pipfile-spec": 6, "requires": {}, "sources": []},
        "default": {
            "demo": {"editable": True, "path": "."},
            "helper": {"editable": True, "path": "libs/helper"},
            "six": {"hashes": [], "version": "==1.16.0"},
            "wheel-from-url": {"file": "https://example.org/whl/x-1.0-py3-none-any.whl"},
            "elsewhere": {"editable": True, "path": "../elsewhere"},
        },
        "develop": {},
    }
    (tmp_path / "Pipfile.lock").write_text(json.dumps(lock))
    project = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    imported = import_file(tmp_path / "Pipfile.lock", project)
    assert imported.requirements == ["six==1.16.0", "helper @ file:./libs/helper"]
    assert imported.notes == [
        "Pipfile.lock: default.demo: demo = {path = '.'} is the project itself: installed from the mounted code with "
        "the metadata its build backend (hatchling.build) gives"
    ]
    assert imported.not_handled == [
        "wheel-from-url (Pipfile.lock: default.wheel-from-url: a file source; envlock locks index packages with "
        "per-file hashes)",
        "elsewhere (Pipfile.lock: default.elsewhere: ../elsewhere, a folder outside the project)",
    ]
    init_project(tmp_path)
    assert [(p.name, p.path) for p in load_spec(tmp_path).local_packages] == [("demo", "."), ("helper", "libs/helper")]


def test_index_credentials_stay_in_the_environment_and_verify_ssl_false_is_said(tmp_path: Path) -> None:
    imported = import_file(IMPORTS / "pipenv-private" / "Pipfile.lock", {})
    assert imported.index_url == "https://deploy:${COMPANY_MIRROR_PASSWORD}@pypi.example.org/simple"
    assert imported.extra_index_urls == ["https://${TORCH_USER}:${TORCH_TOKEN}@download.example.org/whl/cu121"]
    assert not any("s3cret" in line for line in [*imported.notes, imported.index_url, *imported.constraints])
    notes = "\n".join(imported.notes)
    assert "has a password written in it" in notes and "export COMPANY_MIRROR_PASSWORD=" in notes
    assert "verify_ssl = false: envlock verifies its TLS certificate" in notes
    assert imported.constraints == ["idna==3.10", "torch==2.5.1+cu121"]


def test_pdm_lock_pins_every_group_and_wishes_only_the_default_group() -> None:
    imported = import_file(IMPORTS / "pdm.lock", {})
    assert imported.constraints == [
        'colorama==0.4.6 ; sys_platform == "win32"',
        "idna==3.10",
        "pysocks==1.7.1",
        "pytest==8.3.4",
        "requests==2.32.3",
    ], "the requests[socks] entry is the same pin once"
    assert imported.requirements == ["idna==3.10", "pysocks==1.7.1", "requests==2.32.3"]
    assert imported.not_handled == [
        "mylib (pdm.lock: package mylib: a git source; envlock locks index packages with per-file hashes)"
    ]
    assert any("not installed: the dev group(s)" in note for note in imported.notes)
    assert import_file(IMPORTS / "pdm.lock", PROJECT).requirements == []


def test_pdm_sources_in_pyproject_are_the_indexes() -> None:
    project = {
        **PROJECT,
        "tool": {
            "pdm": {
                "source": [
                    {"name": "torch", "url": "https://download.pytorch.org/whl/cu121", "include_packages": ["torch"]},
                    {"name": "pypi", "url": "https://${MIRROR_USER}:${MIRROR_TOKEN}@mirror.example.org/simple"},
                    {"name": "wheels", "url": "https://example.org/wheels/", "type": "find_links"},
                ]
            }
        },
    }
    imported = import_file(IMPORTS / "pdm.lock", project)
    assert imported.index_url == "https://${MIRROR_USER}:${MIRROR_TOKEN}@mirror.example.org/simple"
    assert imported.extra_index_urls == ["https://download.pytorch.org/whl/cu121"]
    assert any("a find_links source, ignored" in note for note in imported.notes)
    assert any("tool.pdm.source[0]: include_packages / exclude_packages are not applied" in n for n in imported.notes)


def test_an_old_pdm_lock_without_package_groups_pins_everything_and_says_so() -> None:
    imported = import_file(IMPORTS / "pdm-4.2" / "pdm.lock", {})
    assert imported.constraints == ["idna==3.10", "pytest==8.3.4"]
    assert imported.requirements == imported.constraints
    assert any("does not say which of its groups (default, test)" in note for note in imported.notes)


def test_sources_order_puts_every_real_lock_before_wish_lists(tmp_path: Path) -> None:
    assert SOURCES.index("pdm.lock") < SOURCES.index("pylock.toml") < SOURCES.index("requirements.txt")
    assert SOURCES.index("Pipfile.lock") < SOURCES.index("pylock.toml")
    assert SOURCES.index("requirements.txt") < SOURCES.index("Pipfile") < SOURCES.index("environment.yml")
    for name in ("Pipfile", "requirements.txt", "pylock.toml", "Pipfile.lock", "pdm.lock"):
        (tmp_path / name).write_text("")
        assert detect(tmp_path) == tmp_path / name, f"{name} wins over what was there"


@pytest.mark.parametrize(
    ("folder", "line"),
    [
        ("pipfile-lock-json", "error: Pipfile.lock:4: not valid JSON (Expecting property name enclosed in double "
         "quotes, column 5)"),
        ("pipfile-lock-version", "error: Pipfile.lock: default.idna.version: '>=3.10' is not one exact version (==X)"),
        ("pdm-lock-version", "error: pdm.lock: lock_version '5.0.0' is not one envlock reads (4.0 to 4.5, written "
         "by PDM 2)"),
        ("pdm-lock-marker", "error: pdm.lock: package idna: 'idna==3.10 ; python_version >>= \"3.8\"' is not a valid "
         "requirement (Expected a marker variable or quoted string)"),
        ("pipfile-extras", "error: Pipfile: packages.requests.extras must be a list of names"),
    ],
)  # fmt: skip
def test_a_broken_pipenv_or_pdm_file_is_one_line_with_exit_27(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], folder: str, line: str
) -> None:
    shutil.copytree(BROKEN / folder, tmp_path / "project")
    assert run(["init", "-C", str(tmp_path / "project")]) == 27
    err = capsys.readouterr().err
    assert err.splitlines()[0] == line and "Traceback" not in err


def test_an_unknown_pipfile_spec_is_refused_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "Pipfile.lock").write_text('{"_meta": {"pipfile-spec": 7}, "default": {}}')
    with pytest.raises(ImportSourceError, match=r"pipfile-spec 7 is not one envlock reads \(1 to 6\)") as raised:
        import_file(tmp_path / "Pipfile.lock", {})
    assert "pipenv lock" in raised.value.hint


def test_init_never_prints_a_password_written_into_an_index_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_text(
        "--index-url https://deploy:s3cret@pypi.example.org/simple\n-f https://deploy:s3cret@example.org/wheels\nidna\n"
    )
    assert run(["init", "-C", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '+ index-url = "https://deploy:****@pypi.example.org/simple"' in out
    assert "s3cret" not in out and "https://deploy:****@example.org/wheels ignored" in out
