"""envlock run against the real engine: the CPU example run twice, exit codes, and a kill -9 of envlock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from envlock.engine.launch import SHM
from envlock.run.records import RunStore

pytestmark = [pytest.mark.docker, pytest.mark.network]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
ENVLOCK = str(Path(sys.executable).with_name("envlock"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the CPU example with its committed lock (a fresh lock would wait for the arm64 base, built meanwhile
    for the emulation tests), built once for the module."""
    project = tmp_path_factory.mktemp("digits")
    for name in ("pyproject.toml", "train.py", "envlock.lock"):
        shutil.copy(EXAMPLE / name, project / name)
    for args in (["lock", "--check"], ["build"]):
        done = subprocess.run([ENVLOCK, *args, "-C", str(project)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    yield project
    client = docker.from_env()
    for image in client.images.list(name="digits"):
        client.images.remove(image.id, force=True)


def envlock(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]], capture_output=True, text=True, check=False
    )


def test_the_example_runs_twice_to_the_same_outputs_in_the_built_image(digits: Path) -> None:
    images = json.loads((digits / ".envlock" / "images.json").read_text())
    (built,) = images.values()
    for _ in range(2):
        done = envlock("run", "--output", "out", "--", "python", "train.py", "--out", "out", project=digits)
        assert done.returncode == 0, done.stderr
        assert '"accuracy"' in done.stdout, "the training output is streamed to the user"
    first, second = RunStore(digits).all()[-2:]
    assert first.image_id == second.image_id == built["image-id"]
    assert first.outputs == second.outputs and set(first.outputs) == {"out/metrics.json", "out/model.pkl"}
    assert all(first.outputs.values())
    assert first.status == second.status == "finished" and first.host is not None and first.host.kernel
    listing = envlock("runs", project=digits)
    assert first.run_id in listing.stdout and second.run_id in listing.stdout
    shown = envlock("runs", "show", second.run_id[:20], project=digits)
    assert shown.returncode == 0 and "out/metrics.json" in shown.stdout and built["image-id"] in shown.stdout


def test_the_containers_dev_shm_holds_more_than_the_engines_64_mib(digits: Path) -> None:
    """PyTorch's DataLoader workers pass batches through /dev/shm: 100 MiB written there from two processes, as
    workers do, where the engine's own 64 MiB would end in a Bus error."""
    script = (
        "import multiprocessing.shared_memory as s, os\n"
        "m = s.SharedMemory(create=True, size=100 * 2**20)\n"
        "m.buf[:] = bytes(100 * 2**20)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    o = s.SharedMemory(m.name); o.buf[-1] = 7; o.close(); os._exit(0)\n"
        "os.waitpid(pid, 0); print('last byte', m.buf[-1]); m.close(); m.unlink()\n"
        "st = os.statvfs('/dev/shm'); print('shm', st.f_blocks * st.f_frsize)\n"
    )
    done = envlock("run", "--", "python", "-c", script, project=digits)
    assert done.returncode == 0, done.stderr
    assert "last byte 7" in done.stdout
    host = os.statvfs(SHM)
    assert f"shm {max(host.f_blocks * host.f_frsize, 64 * 2**20)}" in done.stdout, "as large as the host's"


def test_exit_code_is_propagated(digits: Path) -> None:
    done = envlock("run", "--", "python", "-c", "import sys; print('bye'); sys.exit(3)", project=digits)
    assert done.returncode == 3 and "bye" in done.stdout
    assert RunStore(digits).all()[-1].status == "failed"
    own = envlock("run", "--", "python", "-c", "raise SystemExit(130)", project=digits)
    assert own.returncode == 130 and "interrupted" not in own.stderr, "the command's 130 is its own, not a Ctrl-C"


def test_kill_9_of_envlock_leaves_no_corrupt_record_and_no_orphan(digits: Path) -> None:
    process = subprocess.Popen(
        [ENVLOCK, "run", "-C", str(digits), "--", "python", "-c", "import time; time.sleep(300)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = RunStore(digits)
    before = {r.run_id for r in store.all()}
    client = docker.from_env()
    deadline = time.monotonic() + 120
    record = None
    while time.monotonic() < deadline:
        new = [r for r in store.all() if r.run_id not in before]
        if new and client.containers.list(filters={"label": f"dev.envlock.run-id={new[0].run_id}"}):
            record = new[0]
            break
        time.sleep(0.2)
    assert record is not None, "the run started"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert store.load(record.run_id).status == "running", "the record is whole (written atomically)"

    listing = envlock("runs", project=digits)
    assert listing.returncode == 0
    assert store.load(record.run_id).status == "interrupted"
    leftover = client.containers.list(all=True, filters={"label": f"dev.envlock.run-id={record.run_id}"})
    assert leftover == [], "no orphaned container after the next command"


def test_ctrl_c_stops_and_removes_the_container(digits: Path) -> None:
    process = subprocess.Popen(
        [ENVLOCK, "run", "-C", str(digits), "--", "python", "-c", "import time; time.sleep(300)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    store = RunStore(digits)
    before = {r.run_id for r in store.all()}
    client = docker.from_env()
    deadline = time.monotonic() + 120
    record = None
    while time.monotonic() < deadline and record is None:
        new = [r for r in store.all() if r.run_id not in before]
        if new and client.containers.list(filters={"label": f"dev.envlock.run-id={new[0].run_id}"}):
            record = new[0]
        time.sleep(0.2)
    assert record is not None, "the run started"
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert store.load(record.run_id).status == "interrupted"
    assert client.containers.list(all=True, filters={"label": f"dev.envlock.run-id={record.run_id}"}) == []


def test_diff_reads_the_image_and_compares_runs(digits: Path) -> None:
    (built,) = json.loads((digits / ".envlock" / "images.json").read_text()).values()
    same = envlock("diff", built["reference"], str(digits / "envlock.lock"), project=digits)
    assert same.returncode == 0 and "no differences" in same.stdout, same.stderr
    for seed in ("0", "1"):
        done = envlock(
            "run", "--seed", seed, "--output", "out", "--", "python", "train.py", "--out", "out", project=digits
        )
        assert done.returncode == 0, done.stderr
    first, second = RunStore(digits).all()[-2:]
    moved = envlock("diff", first.run_id, second.run_id, project=digits)
    assert moved.returncode == 0
    assert "seed: 0 -> 1" in moved.stdout and "output out/metrics.json" in moved.stdout


def test_bytecode_goes_to_the_images_folder_on_the_host_and_never_into_the_image(digits: Path) -> None:
    (built,) = json.loads((digits / ".envlock" / "images.json").read_text()).values()
    probe = "import sys, sklearn; print(sys.pycache_prefix)"
    for _ in range(2):
        done = envlock("run", "--", "python", "-c", probe, project=digits)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("/var/cache/envlock-pyc")
    folder = Path(os.environ["ENVLOCK_CACHE_DIR"]) / "pyc" / built["image-id"].removeprefix("sha256:")
    site = folder / "opt" / "envlock" / "venv" / "lib" / "python3.11" / "site-packages"
    compiled = site / "sklearn" / "__init__.cpython-311.pyc"
    assert compiled.is_file() and compiled.stat().st_uid == os.getuid()
    image = docker.from_env().images.get(built["reference"])
    assert image.id == built["image-id"], "running wrote nothing into the image"


def test_a_build_compiles_the_bytecode_in_the_background_once(digits: Path) -> None:
    (built,) = json.loads((digits / ".envlock" / "images.json").read_text()).values()
    folder = Path(os.environ["ENVLOCK_CACHE_DIR"]) / "pyc" / built["image-id"].removeprefix("sha256:")
    marker = folder / ".compiled"
    marker.unlink(missing_ok=True)
    switched_on = {**os.environ, "ENVLOCK_PRECOMPILE": "1"}
    done = subprocess.run(
        [ENVLOCK, "build", "-C", str(digits)], capture_output=True, text=True, check=False, env=switched_on
    )
    assert done.returncode == 0 and "compiling the bytecode" in done.stderr, done.stderr
    deadline = time.monotonic() + 300
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert marker.exists(), "the compile container finished and marked the folder"
    site = folder / "opt" / "envlock" / "venv" / "lib" / "python3.11" / "site-packages"
    assert (site / "numpy" / "__init__.cpython-311.pyc").is_file()
    again = subprocess.run(
        [ENVLOCK, "build", "-C", str(digits)], capture_output=True, text=True, check=False, env=switched_on
    )
    assert again.returncode == 0 and "compiling the bytecode" not in again.stderr, "compiled once"
