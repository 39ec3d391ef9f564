"""Opt-in (-m heavy): the torch GPU example locks, builds (2.5 GB of CUDA wheels) and imports in its image."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from envlock.run.records import RunStore

pytestmark = [pytest.mark.heavy, pytest.mark.docker, pytest.mark.network]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torch-gpu"
ENVLOCK = str(Path(sys.executable).with_name("envlock"))


def test_gpu_example_builds_and_would_run_on_a_gpu_host(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "train.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    for args in (["lock"], ["build"]):
        done = subprocess.run([ENVLOCK, *args, "-C", str(tmp_path)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    probe = ["python", "-c", "import torch; print(torch.__version__, torch.version.cuda)"]
    refused = subprocess.run(
        [ENVLOCK, "run", "-C", str(tmp_path), "--", *probe], capture_output=True, text=True, check=False
    )
    if refused.returncode == 0:  # a GPU host with a new enough driver: it just runs
        assert "2.5.1" in refused.stdout
        return
    assert refused.returncode == 125 and "550.54.14" in refused.stderr, "a CPU host is refused with the driver floor"
    forced = subprocess.run(
        [ENVLOCK, "run", "-C", str(tmp_path), "--force", "--", *probe], capture_output=True, text=True, check=False
    )
    assert forced.returncode == 0, forced.stderr
    version, cuda = forced.stdout.split()
    assert version.startswith("2.5.1") and cuda == "12.4", "the image carries the locked torch and CUDA runtime"
    assert RunStore(tmp_path).all()[-1].forced
    client = docker.from_env()
    for image in client.images.list(name="torch-gpu"):
        client.images.remove(image.id, force=True)


def test_no_gpus_runs_the_cuda_lock_on_a_cpu_host_without_force(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "train.py", "envlock.lock"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    probe = ["python", "-c", "import torch; print(torch.cuda.is_available())"]
    ran = subprocess.run(
        [ENVLOCK, "run", "-C", str(tmp_path), "--no-gpus", "--", *probe], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0 and ran.stdout.split() == ["False"], ran.stderr
    assert "--no-gpus" in ran.stderr and "550.54.14" in ran.stderr, "the note names the driver floor"
    record = RunStore(tmp_path).all()[-1]
    assert not record.forced and record.gpus is False
    again = subprocess.run(
        [ENVLOCK, "reproduce", record.run_id, "-C", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0 and "REPRODUCED:" in again.stdout, again.stdout + again.stderr
