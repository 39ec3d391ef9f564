"""Real uv and real pip-compile against PyPI (small packages) and against an authenticated local index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.errors import IndexUnreachableError, UnsatisfiableError
from envlock.lock import lockfile
from envlock.lock.piptools import PipToolsResolver
from envlock.lock.project import LockOptions, lock_project
from envlock.lock.spec import load_spec
from envlock.lock.uv import UvResolver, find_uv
from tests.integration.localindex import serve_index
from tests.wheelmaker import build_wheel

pytestmark = pytest.mark.network

SMALL = '[project]\nname = "small"\ndependencies = ["requests==2.32.3"]\n'


def pins(lock: lockfile.Lock, platform: str = "linux/amd64") -> dict[str, str]:
    return {p.name: p.version for p in lock.target(platform).packages}


def test_uv_locks_every_file_the_target_may_install(write_project: Callable[[str], Path]) -> None:
    spec = load_spec(write_project(SMALL + '[tool.envlock]\nplatforms = ["linux/amd64", "linux/arm64"]\n'))
    lock = lock_project(spec, UvResolver()).lock
    assert set(pins(lock)) == {"certifi", "charset-normalizer", "idna", "requests", "urllib3"}
    assert pins(lock)["requests"] == "2.32.3"
    for target in lock.targets:
        machine = "x86_64" if target.platform == "linux/amd64" else "aarch64"
        charset = next(p for p in target.packages if p.name == "charset-normalizer")
        assert charset.wheels, "charset-normalizer ships binary wheels for both platforms"
        for package in target.packages:
            for file in package.files:
                assert len(file.sha256) == 64
                assert file.url.startswith("https://files.pythonhosted.org/")
                assert file.url.endswith(file.name)
            for wheel in package.wheels:
                assert wheel.name.endswith(("-none-any.whl", f"_{machine}.whl")), wheel.name
                assert "cp311" in wheel.name or "py3" in wheel.name or "abi3" in wheel.name
        assert target.cuda.kind == "cpu"


def test_pip_tools_gives_the_same_pins_and_files_as_uv(write_project: Callable[[str], Path]) -> None:
    spec = load_spec(write_project(SMALL))
    by_uv = lock_project(spec, UvResolver()).lock
    spec.lock_path.unlink()
    by_pip_tools = lock_project(spec, PipToolsResolver()).lock
    assert pins(by_pip_tools) == pins(by_uv)
    for ours, theirs in zip(
        by_uv.target("linux/amd64").packages, by_pip_tools.target("linux/amd64").packages, strict=True
    ):
        assert {f.sha256 for f in ours.wheels} == {f.sha256 for f in theirs.wheels}, ours.name
        assert (ours.sdist.sha256 if ours.sdist else None) == (theirs.sdist.sha256 if theirs.sdist else None)
    assert by_pip_tools.resolver.startswith("pip-tools ")
    assert by_pip_tools.lock_hash == by_uv.lock_hash, "same pins, same files, same lock"


def test_pip_tools_refuses_a_target_it_cannot_serve(write_project: Callable[[str], Path]) -> None:
    spec = load_spec(write_project(SMALL + '[tool.envlock]\nplatforms = ["linux/arm64"]\n'))
    with pytest.raises(Exception, match="pip-tools resolves only for the interpreter it runs in"):
        lock_project(spec, PipToolsResolver())
    assert not spec.lock_path.exists()


def test_torch_251_locks_its_cuda_stack_without_downloading_it(write_project: Callable[[str], Path]) -> None:
    spec = load_spec(
        write_project(
            '[project]\nname = "gpu"\ndependencies = ["torch==2.5.1"]\n'
            '[tool.envlock]\nplatforms = ["linux/amd64", "linux/arm64"]\n'
        )
    )
    lock = lock_project(spec, UvResolver()).lock
    cuda = lock.target("linux/amd64").cuda
    assert (cuda.runtime, cuda.cudnn, cuda.nccl) == ("12.4.127", "9.1.0.70", "2.21.5")
    assert (cuda.driver_min, cuda.driver_min_compat) == ("550.54.14", "525.60.13")
    assert cuda.archs[0] == "sm_50" and cuda.archs[-1] == "sm_90"
    torch = next(p for p in lock.target("linux/amd64").packages if p.name == "torch")
    assert [w.name for w in torch.wheels] == ["torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl"]
    assert torch.wheels[0].size is not None and torch.wheels[0].size > 500_000_000  # locked, not downloaded
    assert lock.target("linux/arm64").cuda.kind == "cpu"  # PyPI's aarch64 torch carries no CUDA wheels


def test_preferences_keep_pins_until_upgraded(write_project: Callable[[str], Path]) -> None:
    project = write_project('[project]\nname = "p"\ndependencies = ["idna<3.8"]\n')
    lock_project(load_spec(project), UvResolver())
    assert pins(lockfile.read(project / "envlock.lock"))["idna"] == "3.7"
    project = write_project('[project]\nname = "p"\ndependencies = ["idna", "six"]\n')
    outcome = lock_project(load_spec(project), UvResolver())
    assert pins(outcome.lock)["idna"] == "3.7", "an earlier pin that still fits is kept"
    outcome = lock_project(load_spec(project), UvResolver(), options=LockOptions(upgrade_packages=("idna",)))
    assert pins(outcome.lock)["idna"] != "3.7"
    assert outcome.changes.lines()[0].startswith("linux/amd64: ~ idna 3.7 -> ")


def test_unknown_package_and_conflicts(write_project: Callable[[str], Path]) -> None:
    spec = load_spec(write_project('[project]\nname = "p"\ndependencies = ["envlock-no-such-package-zz"]\n'))
    with pytest.raises(UnsatisfiableError, match="'envlock-no-such-package-zz' was not found on the index"):
        lock_project(spec, UvResolver())
    spec = load_spec(write_project('[project]\nname = "p"\ndependencies = ["idna==3.7", "idna==3.8"]\n'))
    with pytest.raises(UnsatisfiableError, match="cannot be satisfied together"):
        lock_project(spec, UvResolver())
    with pytest.raises(UnsatisfiableError, match="cannot be satisfied together"):
        lock_project(spec, PipToolsResolver())


def test_private_index_with_credentials(
    tmp_path: Path, write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = [
        build_wheel(tmp_path, "envlock-probe", "1.0"),
        build_wheel(tmp_path, "envlock-probe", "1.1", requires=("envlock-helper>=2",)),
        build_wheel(tmp_path, "envlock-helper", "2.0"),
    ]
    with serve_index(wheels) as index:
        monkeypatch.setenv("PROBE_TOKEN", index.password)
        url = f"http://{index.user}:${{PROBE_TOKEN}}@127.0.0.1:{index.port}/simple"
        project = write_project(
            f'[project]\nname = "p"\ndependencies = ["envlock-probe"]\n[tool.envlock]\nindex-url = "{url}"\n'
        )
        for resolver in (UvResolver(), PipToolsResolver()):
            (project / "envlock.lock").unlink(missing_ok=True)
            lock = lock_project(load_spec(project), resolver).lock
            assert pins(lock) == {"envlock-probe": "1.1", "envlock-helper": "2.0"}
            text = (project / "envlock.lock").read_text(encoding="utf-8")
            assert index.password not in text and f"{index.user}:" not in text
            assert f"http://127.0.0.1:{index.port}/files/envlock_probe-1.1-py3-none-any.whl" in text
        monkeypatch.setenv("PROBE_TOKEN", "wrong")
        with pytest.raises(Exception) as caught:
            lock_project(load_spec(project), UvResolver(), options=LockOptions(upgrade=True))
        assert "wrong" not in str(caught.value) and index.password not in str(caught.value)


def test_user_index_settings_do_not_leak_into_the_lock(
    write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9/simple")
    monkeypatch.setenv("UV_CONSTRAINT", "/nonexistent/constraints.txt")
    project = write_project('[project]\nname = "p"\ndependencies = ["six==1.16.0"]\n')
    for resolver in (UvResolver(), PipToolsResolver()):
        (project / "envlock.lock").unlink(missing_ok=True)
        lock = lock_project(load_spec(project), resolver).lock
        assert lock.indexes == ("https://pypi.org/simple",)
        assert pins(lock) == {"six": "1.16.0"}


def test_unreachable_index_leaves_the_lock_alone(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project('[project]\nname = "p"\ndependencies = ["six"]\n')
    assert run(["lock", "-C", str(project)]) == 0
    before = (project / "envlock.lock").read_bytes()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["six"]\n[tool.envlock]\nindex-url = "http://127.0.0.1:9/simple"\n',
        encoding="utf-8",
    )
    capsys.readouterr()
    assert run(["lock", "-C", str(project)]) == 5
    err = capsys.readouterr().err
    error = next(line for line in err.splitlines() if line.startswith("error:"))
    assert error.startswith("error: cannot reach the package index: http://127.0.0.1:9/simple/six/")
    assert "hint: check the index URL" in err
    assert (project / "envlock.lock").read_bytes() == before
    with pytest.raises(IndexUnreachableError):
        lock_project(load_spec(project), PipToolsResolver())


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_while_resolving_leaves_nothing_behind(
    tmp_path: Path, write_project: Callable[[str], Path], stop: str
) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) and `kill PID` (SIGTERM to envlock alone) both exit 130."""
    wheel = build_wheel(tmp_path, "envlock-probe", "1.0")
    with serve_index([wheel], stall=20) as index:
        project = write_project(
            f'[project]\nname = "p"\ndependencies = ["envlock-probe"]\n[tool.envlock]\nindex-url = "{index.url()}"\n'
        )
        envlock = Path(sys.executable).with_name("envlock")
        process = subprocess.Popen(
            [str(envlock), "lock", "-C", str(project)],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        )
        assert process.stderr is not None
        assert "resolving" in process.stderr.readline()
        time.sleep(0.5)  # uv is now waiting on the stalled index
        if stop == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "error: interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in project.iterdir()) == ["pyproject.toml"]


def test_exported_pylock_installs_with_uv(write_project: Callable[[str], Path], tmp_path: Path) -> None:
    project = write_project('[project]\nname = "p"\ndependencies = ["six==1.16.0", "idna==3.7"]\n')
    assert run(["lock", "-C", str(project)]) == 0
    pylock = project / "pylock.toml"
    assert run(["export", "pylock", "-C", str(project), "-o", str(pylock)]) == 0
    target = tmp_path / "site"
    done = subprocess.run(
        [
            find_uv(),
            "pip",
            "install",
            "--no-config",
            "--python",
            sys.executable,
            "--target",
            str(target),
            "-r",
            str(pylock),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "six.py").exists()
    assert (target / "idna-3.7.dist-info").is_dir()
