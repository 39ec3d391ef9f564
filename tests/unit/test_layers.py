"""Layer tarballs are a function of the tree's content only: not of mtimes, owners, umask or walk order."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from envlock.image.layers import compress, write_layer


def make_tree(root: Path, mtime: int, mode: int) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "data.bin").write_bytes(b"\x00\x01" * 10)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"timestamped")
    (root / "bin").mkdir()
    script = root / "bin" / "tool"
    script.write_text("#!/opt/envlock/venv/bin/python\n")
    script.chmod(mode | 0o100)
    (root / "bin" / "alias").symlink_to("tool")
    os.link(root / "pkg" / "__init__.py", root / "pkg" / "hardlinked.py")
    for path in [*root.rglob("*"), root]:
        if not path.is_symlink():
            os.utime(path, (mtime, mtime))


def test_same_content_same_bytes(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", mtime=1_000_000_000, mode=0o700)
    make_tree(tmp_path / "b", mtime=1_700_000_000, mode=0o755)
    first = write_layer(tmp_path / "a", tmp_path / "a.tar", mtime=315532800, prefix="opt/envlock/venv")
    second = write_layer(tmp_path / "b", tmp_path / "b.tar", mtime=315532800, prefix="opt/envlock/venv")
    assert first.diff_id == second.diff_id
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert compress(first, tmp_path / "a.tgz") == compress(second, tmp_path / "b.tgz")


def test_entries_are_normalized(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", mtime=1_000_000_000, mode=0o700)
    layer = write_layer(tmp_path / "a", tmp_path / "a.tar", mtime=315532800, prefix="opt/envlock/venv")
    with tarfile.open(layer.tar) as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names[:3] == ["opt", "opt/envlock", "opt/envlock/venv"]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 315532800)
    by_name = {m.name: m for m in members}
    assert by_name["opt/envlock/venv/bin/tool"].mode == 0o755
    assert by_name["opt/envlock/venv/pkg/__init__.py"].mode == 0o644
    assert by_name["opt/envlock/venv/bin/alias"].issym()
    assert by_name["opt/envlock/venv/pkg/hardlinked.py"].isreg()


def test_content_change_changes_the_digest(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", mtime=1, mode=0o755)
    before = write_layer(tmp_path / "a", tmp_path / "a.tar", mtime=315532800)
    (tmp_path / "a" / "pkg" / "__init__.py").write_text("x = 2\n")
    after = write_layer(tmp_path / "a", tmp_path / "b.tar", mtime=315532800)
    assert before.diff_id != after.diff_id
