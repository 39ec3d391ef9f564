"""A bundle is hostile data (issue 21): one malicious example of each class, refused with exit 31 and one line,
before anything is written; nothing outside the test's folder changes. And image layers never write through links."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import stat
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envlock.cli.app import run as cli
from envlock.cli.wiring import Wiring
from envlock.engine.charliecloud import unpack_archive
from envlock.errors import BundleError, EngineError, UsageError
from envlock.evidence.bundle import unpacked
from envlock.run.arguments import is_tar
from envlock.safetar import Limits, extract, extract_rootfs_layer, looks_like_tar, name_problem
from tests.fakes import FakeEngine
from tests.unit.test_runtimes import docker_archive

RUN_ID = "20261126T075012Z-3f9a1c"
RECORD = b'{"run_id": "20261126T075012Z-3f9a1c"}\n'
Extra = tuple[tarfile.TarInfo, bytes | None]


def manifest(listed: dict[str, bytes], **changes: object) -> bytes:
    """A bundle.json of the shape `envlock bundle` writes, listing `listed`; `changes` replace its keys."""
    document: dict[str, object] = {
        "bundle-version": 1,
        "run-id": RUN_ID,
        "commit": None,
        "project-subdir": "",
        "image": {"id": "sha256:" + "a" * 64, "reference": None, "digests": [], "archive": None},
        "contents": {name: hashlib.sha256(data).hexdigest() for name, data in listed.items()},
    }
    return json.dumps(document | changes).encode()


def file(name: str, data: bytes = b"", mode: int = 0o644) -> Extra:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Extra:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def tar_bytes(members: list[Extra], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def bundle_bytes(*extra: Extra, manifest_text: bytes | None = None) -> bytes:
    """A bundle: bundle.json first (valid unless given), run/record.json, then `extra`."""
    text = manifest({"run/record.json": RECORD}) if manifest_text is None else manifest_text
    return tar_bytes([file("bundle.json", text), file("run/record.json", RECORD), *extra])


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under root: its mode and its bytes (a file), its target (a link)."""
    seen: dict[str, tuple[int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        content = (
            path.readlink().as_posix() if path.is_symlink() else path.read_bytes() if stat.S_ISREG(mode) else None
        )  # fmt: skip
        seen[path.relative_to(root).as_posix()] = (mode, content)
    return seen


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder a hostile bundle aims at: its victim file must stay as it is."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "victim").write_text("untouched\n", encoding="utf-8")
    return target


class Verify(Protocol):
    def __call__(self, data: bytes, name: str = "run.tar") -> tuple[int, str]: ...


@pytest.fixture
def verify(tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Verify]:
    """`envlock verify FILE` on the given bytes through the CLI; returns the exit code and the one error line.
    Also checks that nothing under tmp_path (but the bundle) changed and that nothing escaped next to the
    temporary folder the bundle is unpacked in."""
    del outside  # made first: it is part of what must not change
    before = snapshot(tmp_path)
    escape = Path(tempfile.gettempdir()) / f"{tmp_path.name}-escaped"

    def run(data: bytes, name: str = "run.tar") -> tuple[int, str]:
        bundle = tmp_path / "in" / name
        bundle.parent.mkdir(exist_ok=True)
        bundle.write_bytes(data)
        wiring = Wiring(engine_=FakeEngine(), environ={}, say=lambda _m: None, write=lambda _s, _d: None)
        code = cli(["verify", str(bundle)], wiring)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in err and "Aborted" not in err, err
        after = {k: v for k, v in snapshot(tmp_path).items() if k != "in" and not k.startswith("in/")}
        assert after == before, "nothing outside the bundle's own temporary folder changes"
        assert not escape.exists()
        return code, errors[0].removeprefix("error: ").replace(str(bundle), "BUNDLE")

    yield run
    assert not escape.exists()


# --- member types: regular files and folders only ------------------------------------------------------------------


def test_a_symlink_member_and_a_write_through_it_are_refused(verify: Verify, outside: Path) -> None:
    data = bundle_bytes(special("run/out", tarfile.SYMTYPE, str(outside)), file("run/out/victim", b"owned\n"))
    assert verify(data) == (
        31,
        "BUNDLE: member 'run/out' is a symlink: a bundle holds regular files and folders only",
    )


def test_a_hardlink_member_is_refused(verify: Verify, outside: Path) -> None:
    data = bundle_bytes(special("run/victim", tarfile.LNKTYPE, str(outside / "victim")))
    assert verify(data) == (
        31,
        "BUNDLE: member 'run/victim' is a hardlink: a bundle holds regular files and folders only",
    )


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"), (tarfile.FIFOTYPE, "a FIFO")],
)
def test_devices_and_fifos_are_refused(verify: Verify, kind: bytes, what: str) -> None:
    assert verify(bundle_bytes(special("run/dev", kind))) == (
        31,
        f"BUNDLE: member 'run/dev' is {what}: a bundle holds regular files and folders only",
    )


def test_the_cve_2025_4517_symlink_chain_is_refused_at_its_first_link(verify: Verify, outside: Path) -> None:
    """The published pattern: folders with long names, a chain of symlinks that resolves past PATH_MAX (where
    os.path.realpath gives up and the `data` filter's check was fooled), then a file written through the chain."""
    members: list[Extra] = []
    steps = "abcdefghijklmnop"
    path = ""
    for step in steps:
        folder = tarfile.TarInfo(posixpath.join(path, "d" * 247))
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        members += [(folder, None), special(posixpath.join(path, step), tarfile.SYMTYPE, "d" * 247)]
        path = posixpath.join(path, "d" * 247)
    chain = "/".join(steps)
    members.append(special("escape", tarfile.SYMTYPE, chain + "/" + "../" * len(steps) + str(outside)))
    members.append(file("escape/victim", b"owned\n"))
    code, line = verify(bundle_bytes(*members))
    assert (code, line) == (31, "BUNDLE: member 'a' is a symlink: a bundle holds regular files and folders only")


# --- names ------------------------------------------------------------------------------------------------------------


def test_an_absolute_name_is_refused(verify: Verify, outside: Path) -> None:
    name = str(outside / "victim")
    assert verify(bundle_bytes(file(name, b"owned\n"))) == (
        31,
        f"BUNDLE: member {name!r} has an absolute name: refusing the bundle",
    )


def test_a_dot_dot_name_is_refused(verify: Verify, tmp_path: Path) -> None:
    name = f"../{tmp_path.name}-escaped"  # next to the temporary folder the bundle is unpacked in
    assert verify(bundle_bytes(file(name, b"owned\n"))) == (
        31,
        f"BUNDLE: member {name!r} has a '..' component: refusing the bundle",
    )


CAFE = "run/caf\u00e9"
CAFE_NFD = unicodedata.normalize("NFD", CAFE)


@pytest.mark.parametrize(
    ("members", "line"),
    [
        ([file("run/record.json", b"again")], "BUNDLE: member 'run/record.json' appears twice"),
        ([file(CAFE, b"1"), file(CAFE_NFD, b"2")], f"BUNDLE: member {CAFE_NFD!r} appears twice"),
        ([file("run/x", b"1"), file("run/x/y", b"2")], "BUNDLE: 'run/x/y' is both a file and a folder"),
        ([file("run/x/y", b"1"), file("run/x", b"2")], "BUNDLE: 'run/x' is both a file and a folder"),
    ],
)
def test_duplicate_names_are_refused(verify: Verify, members: list[Extra], line: str) -> None:
    assert verify(bundle_bytes(*members)) == (31, line)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("run//x", "an empty component ('//' or a trailing '/')"),
        ("./run/x", "a '.' component"),
        ("run\\x", "a backslash in the name"),
        ("run/\x1b[2Jx", "a control character in the name"),
        ("run/\x85x", "a control character in the name"),
        ("run/" + "n" * 256, "a name too long for the file system"),
    ],
)
def test_unnormalized_or_unsafe_names_are_refused(verify: Verify, name: str, problem: str) -> None:
    assert verify(bundle_bytes(file(name, b"1"))) == (31, f"BUNDLE: member {name!r} has {problem}: refusing the bundle")


SEGMENT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # every code point but surrogates


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(SEGMENT, st.sampled_from(["", ".", "..", "a", "/"])), min_size=1, max_size=6))
def test_a_name_passes_the_rules_exactly_when_it_is_its_own_normal_form_inside(parts: list[str]) -> None:
    """The rules against a reference written another way (posixpath.normpath), and what they promise."""
    name = "/".join(parts)
    reference = (
        posixpath.normpath(name) == name
        and name not in (".", "..")
        and not name.startswith(("/", "../"))
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\\" for c in name)
        and len(name.encode()) <= 4095
        and all(len(part.encode()) <= 255 for part in name.split("/"))
    )
    assert (name_problem(name) is None) == reference, name
    if reference:
        assert posixpath.normpath(posixpath.join("/root", name)).startswith("/root/")


# --- sizes, compression, truncation, garbage -------------------------------------------------------------------------


def test_a_member_over_the_per_file_cap_is_refused_from_its_header(
    verify: Verify, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENVLOCK_BUNDLE_MAX_FILE_BYTES", "1K")
    data = bundle_bytes(file("outputs/big", b"x" * 2048))
    assert verify(data) == (31, "BUNDLE: member 'outputs/big' is 2048 bytes, over the per-file cap: refusing it")
    (tmp_path / "in" / "dest").mkdir()
    with pytest.raises(BundleError) as refused:
        extract(tmp_path / "in" / "run.tar", tmp_path / "in" / "dest")
    assert "ENVLOCK_BUNDLE_MAX_FILE_BYTES" in refused.value.hint
    assert list((tmp_path / "in" / "dest").iterdir()) == [], "refused before a byte is written"


def test_the_total_cap_counts_every_member(verify: Verify, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVLOCK_BUNDLE_MAX_BYTES", "4096")
    data = bundle_bytes(*(file(f"outputs/{i}", b"x" * 2000) for i in range(3)))
    assert verify(data) == (31, "BUNDLE: unpacks to more than 4096 bytes (the total cap): refusing it")


def test_a_member_with_more_data_than_its_header_says_is_refused(verify: Verify) -> None:
    data = bytearray(bundle_bytes(file("outputs/a", b"0123456789"), file("outputs/b", b"after")))
    at = data.index(b"0123456789")
    data[at + 512 : at + 512] = b"smuggled data the header does not count".ljust(512, b"!")
    code, line = verify(bytes(data))
    assert (code, line) == (
        31,
        f"BUNDLE: not a readable tar: a header whose checksum is wrong (not a tar file, or damaged) at byte {at + 512}",
    )


def test_a_member_with_less_data_than_its_header_says_is_truncated(
    verify: Verify,
) -> None:
    data = bundle_bytes(file("outputs/a", b"x" * 5000))
    cut = data[: data.index(b"x" * 5000) + 1000]
    assert verify(cut) == (31, "BUNDLE: truncated: the archive ends inside the data of 'outputs/a'")


@pytest.mark.parametrize("compress", ["", "gzip", "bz2"])
def test_a_truncated_bundle_is_one_line_never_aborted(verify: Verify, compress: str) -> None:
    """A plain tar cut short, and a compressed one (which Python's tarfile turns into EOFError: "Aborted!")."""
    data = bundle_bytes(file("outputs/a", os.urandom(40000)))
    packed = {"": data, "gzip": gzip.compress(data), "bz2": bz2.compress(data)}[compress]
    code, line = verify(packed[: len(packed) * 2 // 3], "run.tar.gz" if compress else "run.tar")
    assert code == 31
    if compress:
        assert line.startswith(f"BUNDLE: its {compress} stream is damaged or truncated (")
    else:
        assert line == "BUNDLE: truncated: the archive ends inside the data of 'outputs/a'"


def test_a_bundle_cut_at_a_member_boundary_lacks_its_end_marker(verify: Verify) -> None:
    data = bundle_bytes()
    end = data.index(RECORD) + 512
    assert verify(data[:end]) == (31, "BUNDLE: truncated: the archive ends before its end-of-archive marker")


def test_a_gzip_bomb_is_refused_by_its_ratio_before_anything_is_written(verify: Verify, tmp_path: Path) -> None:
    bomb = gzip.compress(bundle_bytes(file("outputs/zeros", bytes(24 << 20))), compresslevel=9)
    assert len(bomb) < 64 << 10
    code, line = verify(bomb, "run.tar.gz")
    assert (code, line) == (
        31,
        f"BUNDLE: decompresses to more than 100x its {len(bomb)} bytes (a compression bomb?): refusing it",
    )
    dest = tmp_path / "in" / "dest"
    dest.mkdir()
    with pytest.raises(BundleError, match="compression bomb"):
        extract(tmp_path / "in" / "run.tar.gz", dest)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"\x00garbage" * 400, "not a readable tar: a header whose checksum is wrong (not a tar file, or damaged)"),
        (b"", "truncated: the archive ends before its end-of-archive marker"),
        (b"\x1f\x8b\x08\x00garbage" * 10, "its gzip stream is damaged or truncated ("),
    ],
)
def test_a_garbage_file_named_as_a_tar_is_refused(verify: Verify, data: bytes, line: str) -> None:
    code, said = verify(data)
    assert code == 31 and said.startswith(f"BUNDLE: {line}"), said


def test_data_after_the_end_marker_is_refused(verify: Verify) -> None:
    data = bundle_bytes() + tar_bytes([file("outputs/appended", b"second archive")])
    code, line = verify(data)
    assert code == 31 and line.startswith("BUNDLE: not a readable tar: data after the end-of-archive marker"), line


def test_limits_come_from_the_environment_and_keywords() -> None:
    limits = Limits.from_environ({"ENVLOCK_BUNDLE_MAX_BYTES": "2G", "ENVLOCK_BUNDLE_MAX_RATIO": "7"}, max_members=9)
    assert limits == Limits(max_bytes=2 << 30, max_file_bytes=32 << 30, max_ratio=7, max_members=9)
    with pytest.raises(UsageError, match="ENVLOCK_BUNDLE_MAX_FILE_BYTES='-1' is not a positive whole number"):
        Limits.from_environ({"ENVLOCK_BUNDLE_MAX_FILE_BYTES": "-1"})


# --- bundle.json ------------------------------------------------------------------------------------------------------


CONTENTS = {"run/record.json": RECORD}
NOT_JSON = "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"{not json", NOT_JSON),
        (b"[1, 2]", "is malformed: it is not a table"),
        (manifest(CONTENTS, **{"bundle-version": "1"}), "is malformed: 'bundle-version' is '1', not 1"),
        (manifest(CONTENTS, **{"run-id": "/etc"}), "is malformed: 'run-id' '/etc' is not a run id"),
        (manifest(CONTENTS, **{"run-id": "../x"}), "is malformed: 'run-id' '../x' is not a run id"),
        (manifest(CONTENTS, **{"run-id": 7}), "is malformed: 'run-id' 7 is not a run id"),
        (manifest(CONTENTS, contents=["run/record.json"]), "is malformed: 'contents' is not a table of files"),
        (
            manifest(CONTENTS, contents={"run/record.json": "abc"}),
            "is malformed: 'contents' gives 'run/record.json' the digest 'abc' (not 64 hex)",
        ),
        (
            manifest(CONTENTS, contents={"../etc/passwd": "0" * 64}),
            "is malformed: 'contents' names '../etc/passwd': a '..' component",
        ),
        (manifest(CONTENTS, commit="--upload-pack=x"), "is malformed: 'commit' '--upload-pack=x' is not a hex commit"),
        (manifest(CONTENTS, image={"id": 1}), "is malformed: 'image.id' 1 is not a string"),
        (
            manifest(CONTENTS, **{"project-subdir": "/abs"}),
            "is malformed: 'project-subdir' '/abs' is not a safe relative folder",
        ),
    ],
)
def test_a_malformed_manifest_is_one_line(verify: Verify, text: bytes, problem: str) -> None:
    assert verify(bundle_bytes(manifest_text=text)) == (31, f"BUNDLE: bundle.json {problem}")


def test_a_tar_without_bundle_json_is_not_a_bundle(verify: Verify) -> None:
    data = tar_bytes([file("run/record.json", RECORD)])
    assert verify(data) == (31, "BUNDLE: has no bundle.json: not an envlock bundle")


# --- what is allowed still passes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["", "gzip", "bz2", "xz"])
def test_a_good_bundle_unpacks_plain_or_compressed_with_safe_modes(tmp_path: Path, compress: str) -> None:
    folder = tarfile.TarInfo("run/sub")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o777
    contents = {"run/record.json": RECORD, "run/sub/train.sh": b"#!/bin/sh\n", f"outputs/{'n' * 200}": b"long name"}
    data = bundle_bytes(
        (folder, None),
        file("run/sub/train.sh", b"#!/bin/sh\n", mode=0o6777),  # setuid, setgid, world-writable: never kept
        file(f"outputs/{'n' * 200}", b"long name", mode=0o600),
        manifest_text=manifest(contents),
    )
    packed = {"": data, "gzip": gzip.compress(data), "bz2": bz2.compress(data), "xz": lzma.compress(data)}
    bundle = tmp_path / "run.tar"
    bundle.write_bytes(packed[compress])
    assert is_tar(bundle) and looks_like_tar(bundle)
    with unpacked(bundle) as found:
        assert found.run_id == RUN_ID and found.archive is None
        modes = {p.relative_to(found.root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in found.root.rglob("*")}
        assert (found.root / "run/sub/train.sh").read_bytes() == b"#!/bin/sh\n"
    umask = os.umask(0)
    os.umask(umask)
    assert modes == {
        "bundle.json": 0o644 & ~umask,
        "run": 0o755 & ~umask,
        "run/record.json": 0o644 & ~umask,
        "run/sub": 0o755,
        "run/sub/train.sh": 0o755 & ~umask,
        "outputs": 0o755 & ~umask,
        f"outputs/{'n' * 200}": 0o644 & ~umask,
    }


def test_a_garbage_file_with_another_name_is_not_taken_for_a_bundle(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.bin"
    garbage.write_bytes(b"\x00garbage" * 100)
    assert not is_tar(garbage) and not looks_like_tar(garbage)


# --- image layers (Charliecloud): links are members, but nothing is written through one -------------------------------


def layer_of(members: list[Extra]) -> bytes:
    return tar_bytes(members)


def test_a_layer_cannot_write_through_a_symlink_of_a_lower_layer(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    lower = layer_of([special("etc", tarfile.SYMTYPE, str(outside))])
    upper = layer_of([file("etc/victim", b"owned\n")])
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [lower, upper])
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with pytest.raises(EngineError) as refused:
        unpack_archive(archive, image_id, rootfs)
    assert refused.value.message == (
        f"cannot unpack {image_id[:19]} for Charliecloud: layer {hashlib.sha256(upper).hexdigest()}/layer.tar of "
        f"{image_id[:19]}: 'etc' is a symlink or a file, not a folder: refusing to write through it"
    )
    assert snapshot(outside) == before


THROUGH_LIB = "'lib' is a symlink or a file, not a folder: refusing to write through it"


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (file("/etc/x", b"1"), "member '/etc/x' has an absolute name: not unpacked"),
        (file("../x", b"1"), "member '../x' has a '..' component: not unpacked"),
        (special("usr/lib/.wh...", tarfile.REGTYPE), "whiteout 'usr/lib/.wh...' hides no valid name"),
        (special("lib/.wh.victim", tarfile.REGTYPE), THROUGH_LIB),
        (special("h", tarfile.LNKTYPE, "lib/victim"), THROUGH_LIB),
    ],
)  # fmt: skip
def test_a_layer_refuses_escaping_names_and_links_through_links(
    tmp_path: Path, outside: Path, member: Extra, problem: str
) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "usr" / "lib").mkdir(parents=True)
    (rootfs / "lib").symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(BundleError) as refused:
        extract_rootfs_layer(io.BytesIO(layer_of([member])), rootfs, source="layer")
    assert refused.value.message == f"layer: {problem}"
    assert snapshot(outside) == before


def test_a_layer_keeps_links_drops_setuid_skips_devices_and_applies_whiteouts(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    folder = tarfile.TarInfo("usr/bin")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
    tool = file("usr/bin/tool", b"binary", mode=0o4755)
    # A file capability as Docker's layers carry it: a pax record whose value is bytes, not UTF-8.
    tool[0].pax_headers = {
        "SCHILY.xattr.security.capability": b"\x01\x00\x00\x02\xff".decode("utf-8", "surrogateescape")
    }
    lower = [
        (folder, None),
        tool,
        special("usr/bin/same", tarfile.LNKTYPE, "usr/bin/tool"),
        special("bin", tarfile.SYMTYPE, "usr/bin"),
        special("dev/null", tarfile.CHRTYPE),
        file("./etc/old", b"old"),
        file("etc/gone", b"gone"),
    ]
    extract_rootfs_layer(io.BytesIO(layer_of(lower)), rootfs, source="lower")
    upper = [special("etc/.wh..wh..opq", tarfile.REGTYPE), file("etc/new", b"new"), file("bin", b"not a link now")]
    extract_rootfs_layer(io.BytesIO(layer_of(upper)), rootfs, source="upper")
    assert snapshot(rootfs) == {
        "bin": (stat.S_IFREG | 0o644 & ~_umask(), b"not a link now"),
        "etc": (stat.S_IFDIR | 0o755 & ~_umask(), None),
        "etc/new": (stat.S_IFREG | 0o644 & ~_umask(), b"new"),
        "usr": (stat.S_IFDIR | 0o755 & ~_umask(), None),
        "usr/bin": (stat.S_IFDIR | 0o755, None),
        "usr/bin/same": (stat.S_IFREG | 0o755 & ~_umask(), b"binary"),
        "usr/bin/tool": (stat.S_IFREG | 0o755 & ~_umask(), b"binary"),
    }
    assert (rootfs / "usr/bin/same").stat().st_ino == (rootfs / "usr/bin/tool").stat().st_ino


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
