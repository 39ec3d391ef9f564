"""The CLI as a user meets it: exit codes, one-line errors with hints, no traceback, files untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.cli.app import ALL_COMMAND_MODULES, COMMAND_MODULES, load_commands, run
from envlock.cli.root import app
from envlock.errors import DIFFERS
from envlock.lock.project import lock_project
from envlock.lock.spec import load_spec
from tests.fakes import TORCH_251_AMD64, FakeResolver, package


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = invoke(capsys, "--help")
    assert code == 0
    for command in ("lock", "show", "export", "build", "base"):
        assert command in out


def _registering_modules() -> dict[str, set[str]]:
    """Every top-level command and group of the loaded CLI, with the modules whose functions it calls."""
    found: dict[str, set[str]] = {}
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        found.setdefault(name, set()).add(command.callback.__module__)
    for group in app.registered_groups:
        assert group.name is not None and group.typer_instance is not None
        sub = group.typer_instance
        callbacks = [c.callback for c in sub.registered_commands]
        if sub.registered_callback is not None:
            callbacks.append(sub.registered_callback.callback)
        found[group.name] = {c.__module__ for c in callbacks if c is not None}
    return found


def test_each_command_loads_the_modules_that_register_it() -> None:
    """The start-up table (which modules a command imports) is exactly what the modules register."""
    load_commands([])
    registered = _registering_modules()
    assert set(ALL_COMMAND_MODULES) == {m.rsplit(".", 1)[-1] for ms in registered.values() for m in ms}
    assert {name: {f"envlock.cli.{m}" for m in ms} for name, ms in COMMAND_MODULES.items()} == registered


def test_a_command_imports_only_its_own_command_module() -> None:
    """`envlock run` does not pay for the other commands' imports (nor typer for building them)."""
    probe = (
        "import sys; from envlock.cli.app import run; code = run(['run', '--help']); "
        "print(code, sorted(m for m in sys.modules if m.endswith('_commands')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 ['envlock.cli.run_commands']"


@pytest.mark.parametrize(
    "command",
    [
        ["lock"],
        ["show"],
        ["build"],
        ["export"],
        ["export", "pylock"],
        ["export", "k8s"],
        ["base"],
        ["base", "list"],
        ["base", "build"],
        ["run"],
        ["runs"],
        ["runs", "show"],
        ["diff"],
        ["archive"],
        ["restore"],
        ["reproduce"],
    ],
)
def test_every_help_page_renders(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = invoke(capsys, *command, "--help")
    assert code == 0, err
    assert "Usage:" in out
    if command == ["build"]:
        assert "([tool.envlock] registry)" in out and "host[:port][/namespace]" in out


def test_spec_problems_exit_2_with_every_problem(
    sample: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = invoke(capsys, "lock", "-C", str(sample("typos")))
    assert code == 20
    lines = err.splitlines()
    assert lines[0] == "error: pyproject.toml has 6 problems"
    assert lines[-1] == "hint: fix the keys listed above"
    assert "Traceback" not in err


def test_malformed_toml_is_one_line(sample: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    project = sample("broken-toml")
    code, _, err = invoke(capsys, "lock", "-C", str(project))
    assert code == 20
    assert err.startswith("error: ") and "not valid TOML" in err and "hint: " in err
    assert not (project / "envlock.lock").exists()


def test_check_exit_codes(sample: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    project = sample("cuda-pinned")
    code, _, err = invoke(capsys, "lock", "--check", "-C", str(project))
    assert code == 4 and "no lock file at" in err
    lock_project(load_spec(project), FakeResolver({"linux/amd64": TORCH_251_AMD64}))
    code, out, _ = invoke(capsys, "lock", "--check", "-C", str(project))
    assert code == 0 and "up to date" in out
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8").replace("2.5.1", "2.6.0"), encoding="utf-8")
    code, _, err = invoke(capsys, "lock", "--check", "-C", str(project))
    assert code == 4 and "stale" in err and "hint: run `envlock lock`" in err


def test_show_text_and_json(sample: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    project = sample("cuda-pinned")
    lock_project(load_spec(project), FakeResolver({"linux/amd64": TORCH_251_AMD64}))
    code, out, _ = invoke(capsys, "show", "-C", str(project))
    assert code == 0
    assert "CUDA 12.4 (runtime 12.4.127, from the wheels)" in out
    assert "driver >= 550.54.14 (full) · >= 525.60.13 (minor-version compatibility)" in out
    assert "GPU architectures: sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90" in out
    assert "inputs up to date" in out
    assert "base not pinned here" in out  # locked through a fake, without a base store
    code, out, _ = invoke(capsys, "show", "--json", "-C", str(project))
    data = json.loads(out)
    assert data["targets"]["linux/amd64"]["cuda"]["cudnn"] == "9.1.0.70"
    assert {p["name"] for p in data["targets"]["linux/amd64"]["packages"]} >= {"torch", "nvidia-nccl-cu12"}
    code, _, err = invoke(capsys, "show", "--platform", "linux/arm64", "-C", str(project))
    assert code == 3 and "has no platform 'linux/arm64'" in err


def test_show_without_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, "show", "-C", str(tmp_path))
    assert code == 3 and "no lock file" in err and "hint: run `envlock lock` first" in err


def test_unknown_resolver(sample: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, "lock", "--resolver", "poetry", "-C", str(sample("basic")))
    assert code == 2 and "unknown resolver 'poetry'" in err


def test_usage_errors_are_not_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, "lock", "--no-such-flag")
    assert code == 2 and "No such option" in err and "Traceback" not in err


def test_diff_of_two_locks_names_the_package(
    write_project: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locks = []
    for version in ("3.7", "3.8"):
        project = tmp_path / version
        project.mkdir()
        (project / "pyproject.toml").write_text(f'[project]\nname = "x"\ndependencies = ["idna=={version}"]\n')
        lock_project(
            load_spec(project), FakeResolver({"linux/amd64": [package("idna", version), package("six", "1.16.0")]})
        )
        locks.append(project)
    code, out, _ = invoke(capsys, "diff", str(locks[0]), str(locks[1] / "envlock.lock"), "-C", str(tmp_path))
    assert code == 0 and out.splitlines()[1:] == ["  linux/amd64: ~ idna 3.7 -> 3.8"]
    code, out, _ = invoke(capsys, "diff", str(locks[0]), str(locks[1]), "--json", "-C", str(tmp_path))
    assert json.loads(out)["targets"]["linux/amd64"]["changed"] == {"idna": {"old": "3.7", "new": "3.8"}}
    code, _, err = invoke(capsys, "diff", str(locks[0]), "no-such-thing", "-C", str(tmp_path))
    assert code == 2 and "is not a lock file, a run of" in err
    code, out, _ = invoke(capsys, "diff", str(locks[0]), str(locks[1]), "--exit-code", "-C", str(tmp_path))
    assert code == DIFFERS and out.splitlines()[1:] == ["  linux/amd64: ~ idna 3.7 -> 3.8"]
    code, _, _ = invoke(capsys, "diff", str(locks[0]), str(locks[1]), "--json", "--exit-code", "-C", str(tmp_path))
    assert code == DIFFERS
    code, out, _ = invoke(capsys, "diff", str(locks[0]), str(locks[0]), "--exit-code", "-C", str(tmp_path))
    assert code == 0 and out.splitlines()[1:] == ["  no differences"]
