"""Wheels that ship the same files (mlflow, mlflow-skinny, mlflow-tracing): later wins, with a warning."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envlock.errors import BuildError
from envlock.image.layers import LayerStore
from envlock.image.plan import ImagePlan, LayerPlan, make_layers
from envlock.image.staging import VenvLayout, find_overlaps
from envlock.image.wheels import WheelCache
from envlock.lock.cuda import CPU
from envlock.lock.lockfile import BaseLock, Lock, TargetLock
from envlock.lock.resolve import LockedFile, LockedPackage
from tests.fakes import FakeFetcher
from tests.wheelmaker import build_wheel

SHARED = "mlflowish/__init__.py"


def _wheels(tmp_path: Path, second: str = "VERSION = 1\n") -> list[Path]:
    return [
        build_wheel(tmp_path, "tiny-skinny", "1.0", extra_files={SHARED: "VERSION = 1\n", "mlflowish/a.py": ""}),
        build_wheel(tmp_path, "tiny-full", "1.0", extra_files={SHARED: second, "mlflowish/b.py": ""}),
    ]


def test_overlapping_files_are_named_with_their_packages(tmp_path: Path) -> None:
    skinny, full = _wheels(tmp_path, second="VERSION = 2\n")
    (overlap,) = find_overlaps([(skinny.name, skinny), (full.name, full)], VenvLayout("3.11"))
    assert (overlap.earlier, overlap.later) == ("tiny-skinny", "tiny-full")
    assert overlap.paths == (f"lib/python3.11/site-packages/{SHARED}",) and overlap.differing == overlap.paths


def test_a_file_against_a_directory_is_a_one_line_refusal(tmp_path: Path) -> None:
    one = build_wheel(tmp_path, "one", "1.0", extra_files={"clash": "a file"})
    two = build_wheel(tmp_path, "two", "1.0", extra_files={"clash/inside.py": ""})
    with pytest.raises(BuildError, match="clash is a file in one and a directory in the other"):
        find_overlaps([(one.name, one), (two.name, two)], VenvLayout("3.11"))


def _made(tmp_path: Path, second: str) -> tuple[list[str], Path]:
    """make_layers over the two wheels in one layer: what it said, and the layer's tar."""
    wheels = _wheels(tmp_path, second=second)
    served, files = {}, []
    for built in wheels:
        data = built.read_bytes()
        url = f"https://files.example/{built.name}"
        served[url] = data
        files.append(LockedFile(built.name, url, hashlib.sha256(data).hexdigest(), len(data)))
    packages = tuple(LockedPackage(f.name.split("-")[0].replace("_", "-"), "1.0", (f,)) for f in files)
    lock = Lock(
        "3.11", BaseLock("debian-bookworm", "recipe", "0" * 64), (), (), 315532800,
        (TargetLock("linux/amd64", "x86_64-manylinux_2_36", CPU, packages),), "sha256:x", "fake", "0",
    )  # fmt: skip
    plan = ImagePlan("demo", "t", "linux/amd64", lock, (LayerPlan("packages", tuple(files), "k", 315532800),))
    cache = WheelCache(tmp_path / "cache", FakeFetcher(served))
    cache.ensure(files)
    said: list[str] = []
    (layer,) = make_layers(plan, cache, LayerStore(tmp_path / "layers"), said.append)
    return said, layer.tar


def test_one_layer_installs_both_later_wins_and_the_build_warns(tmp_path: Path) -> None:
    said, tar = _made(tmp_path, second="VERSION = 2\n")
    warning = next(line for line in said if line.startswith("warning:"))
    assert "tiny-skinny and tiny-full both install 1 file, 1 with other bytes" in warning and SHARED in warning
    assert "later wins" in warning
    import tarfile  # noqa: PLC0415

    with tarfile.open(tar) as archive:
        member = archive.extractfile(f"opt/envlock/venv/lib/python3.11/site-packages/{SHARED}")
        assert member is not None and member.read() == b"VERSION = 2\n", "the later package's copy"


def test_files_shared_with_identical_bytes_are_one_note_not_a_warning_per_pair(tmp_path: Path) -> None:
    said, _ = _made(tmp_path, second="VERSION = 1\n")
    assert not [line for line in said if line.startswith("warning:")]
    notes = [line for line in said if line.startswith("note:")]
    assert notes == [
        f"note: 1 pair of packages (tiny-skinny/tiny-full) install the same 1 file with identical bytes "
        f"(e.g. lib/python3.11/site-packages/{SHARED}): the image holds one copy"
    ]


def test_a_wheels_data_schemes_land_where_the_installer_puts_them(tmp_path: Path) -> None:
    # purelib and scripts under `.data` land in site-packages and bin/; a headers file lands nowhere checked
    one = build_wheel(tmp_path, "one", "1.0", extra_files={"shared/x.py": "1", "one-1.0.data/scripts/tool": "a"})
    files = {"two-1.0.data/purelib/shared/x.py": "1", "two-1.0.data/scripts/tool": "b", "two-1.0.data/headers/h": ""}
    two = build_wheel(tmp_path, "two", "1.0", extra_files=files)
    (overlap,) = find_overlaps([(one.name, one), (two.name, two)], VenvLayout("3.11"))
    assert overlap.paths == ("bin/tool", "lib/python3.11/site-packages/shared/x.py")
    assert overlap.differing == ("bin/tool",)


def test_unusual_member_names_are_read_as_paths(tmp_path: Path) -> None:
    # `./a`, `a//b`, `a/./b` name the same file as `a/b`; a file clashing with a folder is found through them
    one = build_wheel(tmp_path, "one", "1.0", extra_files={"./pkg//mod.py": "1"})
    two = build_wheel(tmp_path, "two", "1.0", extra_files={"pkg//mod.py/./inner.py": ""})
    with pytest.raises(BuildError, match=r"site-packages/pkg/mod\.py is a file in one and a directory in the other"):
        find_overlaps([(one.name, one), (two.name, two)], VenvLayout("3.11"))
    three = build_wheel(tmp_path, "three", "1.0", extra_files={"pkg/./mod.py": "2"})
    (overlap,) = find_overlaps([(one.name, one), (three.name, three)], VenvLayout("3.11"))
    assert overlap.paths == overlap.differing == ("lib/python3.11/site-packages/pkg/mod.py",)
