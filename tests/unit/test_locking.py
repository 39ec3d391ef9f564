"""`envlock lock` through a fake resolver: write only on change, say what changed, never half-write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envlock.errors import LockfileError, SpecError, StaleLockError, UnsatisfiableError
from envlock.image.bases import UpstreamBase
from envlock.lock import lockfile
from envlock.lock.project import LockOptions, check, lock_project
from envlock.lock.spec import load_spec
from tests.fakes import TORCH_251_AMD64, FakeResolver, package

BASIC = {"linux/amd64": [package("numpy", "2.1.3", "cp311-cp311-manylinux_2_17_x86_64"), package("requests", "2.32.3")]}


def test_first_lock_is_written_with_hashes(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    outcome = lock_project(spec, FakeResolver(BASIC))
    assert outcome.written and outcome.previous is None
    on_disk = lockfile.read(spec.lock_path)
    assert on_disk == outcome.lock
    assert on_disk.input_hash == spec.input_hash()
    assert on_disk.lock_hash.startswith("sha256:")
    assert [p.name for p in on_disk.target("linux/amd64").packages] == ["numpy", "requests"]
    assert on_disk.source_date_epoch == 1727784000  # newest upload time of the locked files


def test_unchanged_inputs_do_not_resolve_again(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    resolver = FakeResolver(BASIC)
    lock_project(spec, resolver)
    mtime = spec.lock_path.stat().st_mtime_ns
    messages: list[str] = []
    outcome = lock_project(spec, resolver, report=messages.append)
    assert not outcome.written and not outcome.resolved
    assert len(resolver.requests) == 1
    assert spec.lock_path.stat().st_mtime_ns == mtime
    assert "up to date" in messages[0]


def test_same_resolution_is_not_rewritten(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    lock_project(spec, FakeResolver(BASIC))
    before = spec.lock_path.read_bytes()
    outcome = lock_project(spec, FakeResolver(BASIC), options=LockOptions(upgrade=True))
    assert outcome.resolved and not outcome.written
    assert spec.lock_path.read_bytes() == before


def test_a_lock_from_before_layouts_keeps_its_layout_until_something_else_changes(
    sample: Callable[[str], Path],
) -> None:
    """A lock that names no image layout (layout 1) is not rewritten just to name the newest: its image ID would
    move for nothing. The next real change writes the newest layout with it."""
    spec = load_spec(sample("basic"))
    first = lock_project(spec, FakeResolver(BASIC)).lock
    assert first.image_layout == lockfile.IMAGE_LAYOUT, "a new lock names the newest layout"
    unlaid = tuple(replace(target, layers=None) for target in first.targets)
    lockfile.write(spec.lock_path, replace(first, image_layout=None, targets=unlaid))  # as before layouts were named
    before = spec.lock_path.read_bytes()
    outcome = lock_project(spec, FakeResolver(BASIC), options=LockOptions(upgrade=True))
    assert outcome.resolved and not outcome.written and outcome.lock.image_layout is None
    assert spec.lock_path.read_bytes() == before
    newer = {"linux/amd64": [package("numpy", "2.2.0"), package("requests", "2.32.3")]}
    outcome = lock_project(spec, FakeResolver(newer), options=LockOptions(upgrade=True))
    assert outcome.written and lockfile.read(spec.lock_path).image_layout == lockfile.IMAGE_LAYOUT


def test_changes_are_reported_and_previous_pins_are_preferred(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    lock_project(spec, FakeResolver(BASIC))
    (spec.project_dir / "pyproject.toml").write_text(
        '[project]\nname = "basic"\ndependencies = ["requests>=2", "numpy", "idna"]\n', encoding="utf-8"
    )
    spec = load_spec(spec.project_dir)
    newer = {"linux/amd64": [package("numpy", "2.2.0"), package("requests", "2.32.3"), package("idna", "3.10")]}
    resolver = FakeResolver(newer)
    outcome = lock_project(spec, resolver)
    assert outcome.written
    assert outcome.changes.lines() == ["linux/amd64: + idna 3.10", "linux/amd64: ~ numpy 2.1.3 -> 2.2.0"]
    request = resolver.requests[0]
    assert {p.name: p.version for p in request.preferences} == {"numpy": "2.1.3", "requests": "2.32.3"}
    assert not request.upgrade


def test_upgrade_package_is_passed_and_checked(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    lock_project(spec, FakeResolver(BASIC))
    resolver = FakeResolver(BASIC)
    lock_project(spec, resolver, options=LockOptions(upgrade_packages=("NumPy",)))
    assert resolver.requests[0].upgrade_packages == ("numpy",)
    with pytest.raises(Exception, match="--upgrade-package torch: not in the current lock"):
        lock_project(spec, resolver, options=LockOptions(upgrade_packages=("torch",)))


def test_failed_resolution_leaves_the_lock_untouched(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    lock_project(spec, FakeResolver(BASIC))
    before = spec.lock_path.read_bytes()
    failing = FakeResolver(BASIC, error=UnsatisfiableError("numpy==0 does not exist"))
    with pytest.raises(UnsatisfiableError):
        lock_project(spec, failing, options=LockOptions(upgrade=True))
    assert spec.lock_path.read_bytes() == before
    assert sorted(p.name for p in spec.project_dir.iterdir()) == ["envlock.lock", "pyproject.toml"]


def test_check_compares_inputs_without_resolving(sample: Callable[[str], Path]) -> None:
    project = sample("basic")
    spec = load_spec(project)
    with pytest.raises(StaleLockError, match=r"no lock file at .*envlock\.lock"):
        check(spec)
    lock_project(spec, FakeResolver(BASIC))
    assert check(spec).input_hash == spec.input_hash()
    (project / "pyproject.toml").write_text('[project]\nname = "b"\ndependencies = ["numpy"]\n', encoding="utf-8")
    with pytest.raises(StaleLockError, match="stale"):
        check(load_spec(project))


def test_hand_edited_lock_is_refused(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    lock_project(spec, FakeResolver(BASIC))
    text = spec.lock_path.read_text(encoding="utf-8")
    spec.lock_path.write_text(text.replace('version = "2.1.3"', 'version = "2.1.4"'), encoding="utf-8")
    with pytest.raises(LockfileError, match="edited by hand"):
        check(spec)
    with pytest.raises(LockfileError, match=r"existing envlock\.lock cannot be used"):
        lock_project(spec, FakeResolver(BASIC))


def test_each_platform_is_resolved_for_itself(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("two-platforms"))
    resolver = FakeResolver(
        {
            "linux/amd64": [package("numpy", "2.1.3", "cp311-cp311-manylinux_2_17_x86_64")],
            "linux/arm64": [package("numpy", "2.1.3", "cp311-cp311-manylinux_2_17_aarch64")],
        }
    )
    outcome = lock_project(spec, resolver)
    assert sorted(r.target.uv_python_platform for r in resolver.requests) == [
        "aarch64-manylinux_2_36",
        "x86_64-manylinux_2_36",
    ]
    assert [t.platform for t in outcome.lock.targets] == ["linux/amd64", "linux/arm64"]


def test_cuda_pin_is_checked_and_recorded(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("cuda-pinned"))
    outcome = lock_project(spec, FakeResolver({"linux/amd64": TORCH_251_AMD64}))
    cuda = outcome.lock.target("linux/amd64").cuda
    assert (cuda.runtime, cuda.driver_min, cuda.driver_min_compat) == ("12.4.127", "550.54.14", "525.60.13")
    text = spec.lock_path.read_text(encoding="utf-8")
    assert 'driver-min = "550.54.14"' in text


def test_image_base_cuda_comes_from_the_image(write_project: Callable[[str], Path]) -> None:
    ref = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04@sha256:" + "b" * 64
    project = write_project(
        f'[project]\nname = "x"\ndependencies = ["numpy"]\n[tool.envlock]\nbase = "{ref}"\npython = "3.10"\n'
    )
    image = UpstreamBase(
        ref=ref,
        image_id="sha256:" + "c" * 64,
        architecture="amd64",
        layers=[],
        env={"CUDA_VERSION": "12.4.1", "NV_CUDNN_VERSION": "9.1.0.70-1"},
        packages={"cuda-cudart-12-4": "12.4.127-1"},
        python_homes={"3.10": "/usr/bin"},
    )
    outcome = lock_project(load_spec(project), FakeResolver(BASIC), upstream=lambda _: image)
    assert outcome.lock.base.kind == "image"
    assert outcome.lock.base.sha256 == "b" * 64
    cuda = outcome.lock.target("linux/amd64").cuda
    assert (cuda.source, cuda.runtime, cuda.cudnn) == ("base", "12.4.1", "9.1.0.70")
    assert outcome.lock.target("linux/amd64").python_platform == "x86_64-manylinux_2_28"
    pinned = outcome.lock.target("linux/amd64").base
    assert pinned is not None and pinned.id == image.image_id and pinned.debian == image.packages
    wrong_python = replace(image, python_homes={"3.12": "/usr/local/bin"})
    with pytest.raises(SpecError, match=r"has no python3\.10 in /usr/local/bin or /usr/bin \(it has: 3\.12\)"):
        lock_project(
            load_spec(project), FakeResolver(BASIC), upstream=lambda _: wrong_python, options=LockOptions(upgrade=True)
        )
