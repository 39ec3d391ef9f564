"""Start-up time: what `envlock --help`, `envlock run` and a no-op `envlock build` import before they need it.

Each probe runs in a fresh interpreter and lists which of the heavy modules it loaded. A module that moves back to
a module-level import shows up here by name (the seconds themselves are measured by benchmarks/run.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# docker-py pulls in requests, urllib3 and charset_normalizer (~0.1 s); rich, tomlkit and the build, registry and
# evidence machinery are for the commands that use them.
HEAVY = (
    "docker",
    "requests",
    "urllib3",
    "rich",
    "tomlkit",
    "mlflow",
    "concurrent.futures",
    "envlock.image.build",
    "envlock.image.registry",
    "envlock.evidence.attest",
)


def _loaded(code: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has loaded after running `code` (its output discarded)."""
    probe = (
        "import contextlib, io, sys\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    {code}\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(eval(done.stdout.strip()))  # noqa: S307  (our own probe's printed list of names)


def test_help_and_every_command_module_load_none_of_the_heavy_modules() -> None:
    assert _loaded("from envlock.cli.app import run, load_commands; load_commands([]); run(['--help'])") == []


@pytest.mark.parametrize(
    ("path", "modules"),
    [
        # `envlock run`: spec, lock check, the run core and the image catalog, up to the first engine call.
        (
            "envlock run",
            "envlock.cli.run_commands, envlock.lock.project, envlock.lock.spec, envlock.run.service, "
            "envlock.run.params, envlock.run.tracking, envlock.image.catalog",
        ),
        # A no-op `envlock build`: the plan, checked against the cache, before the one inspect.
        ("envlock build", "envlock.cli.image_commands, envlock.lock.project, envlock.image.plan"),
        # The engine adapters load docker-py on first use only.
        ("the engine adapters", "envlock.engine.docker, envlock.engine.launch, envlock.cli.wiring"),
    ],
)
def test_the_paths_import_no_heavy_module_before_they_use_it(path: str, modules: str) -> None:
    assert (path, _loaded(f"import {modules}")) == (path, [])
