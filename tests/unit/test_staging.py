"""Wheels unpacked into the image venv layout: scripts point at the image's Python, nothing machine-specific."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from packaging.tags import Tag

from envlock.errors import NoWheelError
from envlock.image.staging import VENV, VenvLayout, install_wheel
from envlock.lock.resolve import LockedPackage
from envlock.lock.targets import Target, choose_wheel, tag_rank
from tests.fakes import wheel
from tests.wheelmaker import build_wheel


def test_install_writes_only_the_wheel_and_a_script(tmp_path: Path) -> None:
    built = build_wheel(tmp_path, "hello-tool", "1.0", console_scripts=("hello = hello_tool:main",))
    root = tmp_path / "venv"
    layout = VenvLayout("3.11")
    layout.skeleton(root)
    install_wheel(built, built.name, root, layout)
    site = root / "lib/python3.11/site-packages"
    assert (site / "hello_tool/__init__.py").is_file()
    dist_info = site / "hello_tool-1.0.dist-info"
    assert sorted(p.name for p in dist_info.iterdir()) == [
        "INSTALLER",
        "METADATA",
        "RECORD",
        "WHEEL",
        "entry_points.txt",
    ]
    assert (dist_info / "INSTALLER").read_text() == "envlock\n"
    script = (root / "bin" / "hello").read_text()
    assert script.startswith(f"#!{VENV}/bin/python\n")
    assert str(tmp_path) not in script and str(tmp_path) not in (dist_info / "RECORD").read_text()
    assert not list(root.rglob("*.pyc"))
    assert (root / "bin" / "python").readlink() == Path("/usr/bin/python3.11")
    assert "version = 3.11" in (root / "pyvenv.cfg").read_text()


def test_bytecode_a_wheel_ships_is_skipped_without_a_python_warning(tmp_path: Path) -> None:
    pyc = "hello_tool/__pycache__/__init__.cpython-311.pyc"
    built = build_wheel(tmp_path, "hello-tool", "1.0", extra_files={pyc: "not bytecode"})
    root = tmp_path / "venv"
    layout = VenvLayout("3.11")
    layout.skeleton(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        install_wheel(built, built.name, root, layout)
    assert [str(w.message) for w in caught] == [], "a raw warning would reach the user naming envlock's source"
    site = root / "lib/python3.11/site-packages"
    assert (site / "hello_tool/__init__.py").is_file() and not (site / pyc).exists()


def test_choose_wheel_prefers_the_most_specific_tag() -> None:
    tags = Target("linux/amd64", "3.11", (2, 36)).wheel_tags()
    assert tags[0] == Tag("cp311", "cp311", "manylinux_2_36_x86_64")
    generic = wheel("charset-normalizer", "3.4.0", "py3-none-any")
    stable_abi = wheel("charset-normalizer", "3.4.0", "cp37-abi3-manylinux_2_17_x86_64")
    specific = wheel("charset-normalizer", "3.4.0", "cp311-cp311-manylinux_2_17_x86_64")
    package = LockedPackage("charset-normalizer", "3.4.0", (generic, stable_abi, specific))
    assert choose_wheel(package, tags) == specific
    assert choose_wheel(LockedPackage("charset-normalizer", "3.4.0", (generic, stable_abi)), tags) == stable_abi
    # The ranks made once for a whole plan choose the same wheels as the tags in order.
    rank = tag_rank(tags)
    assert rank[tags[0]] == 0 and len(rank) == len(tags)
    assert choose_wheel(package, rank) == specific
    assert choose_wheel(LockedPackage("charset-normalizer", "3.4.0", (generic, stable_abi)), rank) == stable_abi


def test_sdist_only_package_is_refused_by_name() -> None:
    sdist_only = LockedPackage("oldpkg", "0.1", wheels=(), sdist=wheel("oldpkg", "0.1"))
    with pytest.raises(NoWheelError, match=r"oldpkg 0\.1 has no wheel for this target"):
        choose_wheel(sdist_only, [Tag("py3", "none", "any")])
