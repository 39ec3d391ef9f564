"""envlock.paths: the run folder's and `.envlock/`'s names live there and nowhere else in src/."""

from __future__ import annotations

import ast
from pathlib import Path

from envlock import paths
from envlock.paths import ProjectLayout
from envlock.run.records import RunStore
from tests.srcscan import SRC, found_outside

# The names a run folder and a project's state folder are made of (the record's keys `outputs` and `nodes` share
# their spelling with two folders, so those two are left to review).
LAYOUT_NAMES = {
    paths.STATE_DIR,
    paths.LOCK_FILE,
    paths.RECORD_FILE,
    paths.DIFF_FILE,
    paths.LOG_FILE,
    paths.VERDICT_FILE,
    paths.ATTESTATION,
    paths.SIGNER,
}


def test_the_names_existing_run_folders_are_made_of() -> None:
    # Run folders and projects written by earlier versions are read by these names: they are a format.
    assert {
        ".envlock",
        "envlock.lock",
        "record.json",
        "diff.patch",
        "log.txt",
        "verdict.json",
        "attestation.dsse.json",
        "attestation.pub.pem",
    } == LAYOUT_NAMES
    assert (paths.OUTPUTS_DIR, paths.NODES_DIR) == ("outputs", "nodes")
    layout = ProjectLayout(Path("p"))
    assert layout.lock == Path("p/envlock.lock")
    assert layout.attestations == Path("p/.envlock/attestations")
    assert RunStore(Path("p")).directory("r1") == Path("p/.envlock/runs/r1")
    assert RunStore(Path("p"), node=2).directory("r1") == Path("p/.envlock/runs/r1/nodes/2")


def _layout_literals(source: str) -> list[str]:
    """String constants in `source` that spell a layout name, or a path under `.envlock/`."""
    return [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value in LAYOUT_NAMES or node.value.startswith(f"{paths.STATE_DIR}/"))
    ]


def test_the_scan_finds_layout_names_spelled_out() -> None:
    source = 'a = p / "record.json"\nb = f".envlock/runs/{x}"\nc = "a record.json in prose"\n'
    assert _layout_literals(source) == ["record.json", ".envlock/runs/"]


def test_the_layout_is_spelled_only_in_paths() -> None:
    assert found_outside("paths.py", _layout_literals) == {}


def test_no_two_modules_share_a_name() -> None:
    # "diff.py" in two packages read as one concept; each module's name says what it holds.
    names = [path.name for path in SRC.rglob("*.py") if path.name not in {"__init__.py", "__main__.py"}]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
    assert {"lockdiff.py", "rundiff.py", "gcneeds.py"} <= set(names)
