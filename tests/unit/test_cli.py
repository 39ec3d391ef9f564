"""The CLI as a user meets it: exit codes, one-line errors with hints, no traceback, files untouched."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.cli.app import run
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
