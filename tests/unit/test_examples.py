"""The bundled examples carry locks that match their pyproject.toml (checked without resolving)."""

from __future__ import annotations

from pathlib import Path

import pytest

from envlock.lock import lockfile
from envlock.lock.project import check
from envlock.lock.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["digits", "torch-gpu"])
def test_example_lock_is_current(name: str) -> None:
    lock = check(load_spec(EXAMPLES / name))
    assert lock == lockfile.read(EXAMPLES / name / "envlock.lock")


def test_gpu_example_locks_the_cuda_12_4_stack() -> None:
    cuda = lockfile.read(EXAMPLES / "torch-gpu" / "envlock.lock").target("linux/amd64").cuda
    assert (cuda.runtime, cuda.cudnn, cuda.nccl, cuda.driver_min) == ("12.4.127", "9.1.0.70", "2.21.5", "550.54.14")


def test_cpu_example_has_no_cuda() -> None:
    lock = lockfile.read(EXAMPLES / "digits" / "envlock.lock")
    assert [t.cuda.kind for t in lock.targets] == ["cpu", "cpu"]
