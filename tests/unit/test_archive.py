"""The docker-archive room (envlock.engine.archive): what the writer writes the reader reads back, byte for byte and
the same bytes each time; a layer or a config that is not its digest is one error, ArchiveMismatchError (exit 15),
whichever path finds it: restore, `envlock archive`, Charliecloud, the OCI export, the base store, the fake engine."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from envlock.engine.archive import (
    ImageArchive,
    VerifiedStream,
    parse_manifest,
    scan,
    verified_config,
    write_archive,
)
from envlock.engine.charliecloud import unpack_archive, unpack_layers
from envlock.engine.docker import Sink, save_file
from envlock.engine.runtimes import LayerFile
from envlock.errors import ArchiveMismatchError, EngineError, ImageArchiveError, RestoreError
from envlock.image.bases import export_upstream
from envlock.image.layers import LayerStore
from envlock.image.portable import oci_archive
from envlock.image.restore import load_archive, verify_archive, write_archive_file
from tests.fakes import FakeEngine


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


LOWER = layer_tar({"etc/base": b"the base layer\n", "usr/bin/python3.11": b"#!python\n"})
UPPER = layer_tar({"etc/envlock/envlock.lock": b'python = "3.11"\n'})


def image_config(*layers: bytes) -> bytes:
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(data) for data in layers]},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


CONFIG = image_config(LOWER, UPPER)
IMAGE_ID = sha(CONFIG)


def layer_files(tmp_path: Path, *layers: bytes) -> list[tuple[str, Path]]:
    parts = []
    for index, data in enumerate(layers):
        path = tmp_path / f"layer{index}.tar"
        path.write_bytes(data)
        parts.append((sha(data), path))
    return parts


def written(tmp_path: Path, name: str = "image.tar", repo_tags: tuple[str, ...] = ()) -> Path:
    out = tmp_path / name
    with out.open("wb") as sink:
        assert write_archive(sink, CONFIG, layer_files(tmp_path, LOWER, UPPER), repo_tags=repo_tags) == IMAGE_ID
    return out


def rewritten(archive: Path, out: Path, change: Mapping[str, bytes]) -> Path:
    """A copy of a tar with some members' contents replaced (sizes follow), the rest as they were."""
    with tarfile.open(archive) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as target:
        for member in source.getmembers():
            handle = source.extractfile(member) if member.isreg() else None
            data = change.get(member.name, handle.read() if handle else b"")
            member.size = len(data)
            target.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return out


def upper_member() -> str:
    return f"{sha(UPPER)[7:]}/layer.tar"


def tampered(tmp_path: Path) -> Path:
    """The archive with the lock in its top layer changed (same length): the layer is no longer its diff_id."""
    edited = UPPER.replace(b'"3.11"', b'"3.12"')
    return rewritten(written(tmp_path), tmp_path / "tampered.tar", {upper_member(): edited})


LAYER_REFUSED = f"is corrupt or tampered: layer {upper_member()} is not {sha(UPPER)[:19]}"


# --- the room itself -----------------------------------------------------------------------------------------------


def test_what_the_writer_writes_the_reader_reads_back(tmp_path: Path) -> None:
    archive = written(tmp_path, repo_tags=("demo:1",))
    with ImageArchive(archive) as read:
        image = read.image()
        assert (image.image_id, image.config.data, image.repo_tags) == (IMAGE_ID, CONFIG, ("demo:1",))
        assert image.config.diff_ids == (sha(LOWER), sha(UPPER))
        assert [read.layer(image, index).read() for index in range(2)] == [LOWER, UPPER]
        assert read.image(IMAGE_ID) == image
    assert verify_archive(archive) == IMAGE_ID
    with archive.open("rb") as stream:
        assert scan(stream, "the stream").image_id(IMAGE_ID) == IMAGE_ID


def test_the_writer_writes_the_same_bytes_for_the_same_inputs_from_files_or_streams(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = written(tmp_path / "a"), written(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    with ImageArchive(first) as read:
        image = read.image()
        from_streams = io.BytesIO()
        write_archive(from_streams, CONFIG, [(sha(LOWER), read.layer(image, 0)), (sha(UPPER), read.layer(image, 1))])
    assert from_streams.getvalue() == first.read_bytes()
    # What the build has always sent the engine: config, manifest, layers; no tags unless asked.
    with tarfile.open(first) as tar:
        assert tar.getnames() == [
            f"{IMAGE_ID[7:]}.json",
            "manifest.json",
            f"{sha(LOWER)[7:]}/layer.tar",
            upper_member(),
        ]
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None and json.load(manifest)[0]["RepoTags"] is None


def test_a_layer_that_is_not_its_diff_id_is_refused_before_its_last_chunk(tmp_path: Path) -> None:
    with ImageArchive(tampered(tmp_path)) as read:
        image = read.image()
        stream = read.layer(image, 1)
        with pytest.raises(ArchiveMismatchError) as refused:
            stream.read()
        assert stream.read(1) == b"", "nothing more is handed out after a refusal"
    assert refused.value.message == f"archive {tmp_path / 'tampered.tar'} {LAYER_REFUSED}"
    assert refused.value.exit_code == 15
    # Chunk by chunk: every byte but the last chunk may pass; the last is held back and never handed out.
    chunks = iter([b"a" * 10, b"b" * 10, b"c" * 10])
    held_back = VerifiedStream(chunks, sha(b"not these bytes"), 30, what="0", source="a stream")
    got = held_back.read(15)
    with pytest.raises(ArchiveMismatchError, match="a stream is corrupt or tampered: layer 0 is not"):
        got += held_back.read(15)
    assert got == b"a" * 10 + b"b" * 5


def test_a_config_that_is_not_the_digest_it_is_named_by_is_refused(tmp_path: Path) -> None:
    edited = CONFIG.replace(b"PATH=/usr/bin", b"PATH=/tmp/xx")
    bad = rewritten(written(tmp_path), tmp_path / "bad.tar", {f"{IMAGE_ID[7:]}.json": edited})
    with pytest.raises(ArchiveMismatchError) as refused, ImageArchive(bad) as read:
        read.image()
    assert refused.value.message == (
        f"archive {bad} is corrupt or tampered: its config {IMAGE_ID[7:]}.json is not the digest it is named by"
    )
    with pytest.raises(ArchiveMismatchError, match=r"holds image sha256:[0-9a-f]{12}, not sha256:000000000000"):
        verified_config(CONFIG, "a config", image_id="sha256:" + "0" * 64)


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (b"{}", "its manifest.json lists no image"),
        (b"[]", "its manifest.json lists no image"),
        (b'[{"Config": 1, "Layers": []}]', "an entry of its manifest.json is not"),
        (b'[{"Config": "c.json", "Layers": "x"}]', "an entry of its manifest.json is not"),
        (b'[{"Config": "c.json", "Layers": [], "RepoTags": "demo:1"}]', "an entry of its manifest.json is not"),
        (b"not json", "its manifest.json is not JSON"),
    ],
)
def test_the_manifest_is_parsed_strictly(manifest: bytes, problem: str) -> None:
    with pytest.raises(ImageArchiveError, match=f"^x is not a readable image archive: {problem}"):
        parse_manifest(manifest, "x")


def test_an_archive_that_lacks_a_layer_is_read_only_as_a_partial_one(tmp_path: Path) -> None:
    out = tmp_path / "partial.tar"
    with out.open("wb") as sink:
        write_archive(sink, CONFIG, layer_files(tmp_path, LOWER, UPPER), held=1)
    with ImageArchive(out) as read:
        with pytest.raises(ImageArchiveError, match=f"it lacks {sha(LOWER)[7:]}/layer.tar"):
            read.image()
        image = read.image(partial=True)
        assert image.layers[0] is None and read.layer(image, 1).read() == UPPER


def test_docker_20_10_links_and_a_gzipped_archive_are_read(tmp_path: Path) -> None:
    """docker save (20.10) links a layer repeated under another v1 id to its first copy; a user may gzip it."""
    empty = layer_tar({})
    config = image_config(empty, UPPER, empty)
    entries = [("aaaa/layer.tar", empty), ("bbbb/layer.tar", UPPER)]
    out = tmp_path / "saved.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in [*entries, (f"{sha(config)[7:]}.json", config)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("cccc/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../aaaa/layer.tar"
        tar.addfile(link)
        names = ["aaaa/layer.tar", "bbbb/layer.tar", "cccc/layer.tar"]
        manifest = json.dumps([{"Config": f"{sha(config)[7:]}.json", "RepoTags": ["x:1"], "Layers": names}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    zipped = tmp_path / "saved.tar.gz"
    zipped.write_bytes(gzip.compress(out.read_bytes()))
    for path in (out, zipped):
        with ImageArchive(path) as read:
            image = read.image(sha(config))
            assert [read.layer(image, index).read() for index in range(3)] == [empty, UPPER, empty]
    with out.open("rb") as stream:
        assert scan(stream, "saved").image_id() == sha(config)


@pytest.mark.parametrize(
    ("kind", "linkname", "problem"),
    [
        (tarfile.SYMTYPE, "../../etc/passwd", "links to '../../etc/passwd', outside the archive"),
        (tarfile.SYMTYPE, "/etc/passwd", "links to '/etc/passwd', outside the archive"),
        (tarfile.CHRTYPE, "", "is a character device"),
        (tarfile.FIFOTYPE, "", "is a FIFO"),
    ],
)
def test_members_an_image_archive_never_holds_are_refused(
    tmp_path: Path, kind: bytes, linkname: str, problem: str
) -> None:
    out = written(tmp_path)
    with tarfile.open(out, "a") as tar:
        odd = tarfile.TarInfo("odd/layer.tar")
        odd.type, odd.linkname = kind, linkname
        tar.addfile(odd)
    with pytest.raises(ImageArchiveError) as refused:
        ImageArchive(out)
    assert refused.value.message.startswith(f"archive {out} is not a readable image archive: member 'odd/layer.tar' ")
    assert problem in refused.value.message


def test_a_member_twice_is_refused(tmp_path: Path) -> None:
    out = written(tmp_path)
    with tarfile.open(out, "a") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    with pytest.raises(ImageArchiveError, match=r"member 'manifest\.json' appears twice"):
        ImageArchive(out)


# --- every path that reads an archive: the same error for the same failure ------------------------------------------


def test_restore_refuses_the_tampered_layer_with_the_one_error(tmp_path: Path) -> None:
    bad = tampered(tmp_path)
    engine = FakeEngine()
    with pytest.raises(ArchiveMismatchError, match=LAYER_REFUSED):
        load_archive(bad, IMAGE_ID, engine)
    assert engine.images == {}, "nothing loaded"
    with pytest.raises(ArchiveMismatchError, match=LAYER_REFUSED):
        verify_archive(bad)


def test_charliecloud_and_the_oci_export_refuse_the_tampered_layer_with_the_one_error(tmp_path: Path) -> None:
    bad = tampered(tmp_path)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with pytest.raises(ArchiveMismatchError, match=f"^the export of {IMAGE_ID[:19]} {LAYER_REFUSED}$"):
        unpack_archive(bad, IMAGE_ID, rootfs)
    assert (rootfs / "etc/base").is_file() and not (rootfs / "etc/envlock").exists(), "no byte of the refused layer"
    with pytest.raises(ArchiveMismatchError, match=f"^the export of {IMAGE_ID[:19]} {LAYER_REFUSED}$"):
        oci_archive(bad, IMAGE_ID, tmp_path / "oci.tar", "x:1")
    assert not (tmp_path / "oci.tar").exists() and not (tmp_path / ".oci.tar.partial").exists()
    fetched = tmp_path / "fetched.tar"
    fetched.write_bytes(UPPER + b"x")
    layers = [LayerFile(tmp_path / "layer0.tar", "none", sha(LOWER)), LayerFile(fetched, "none", sha(UPPER))]
    with pytest.raises(ArchiveMismatchError) as refused:
        unpack_layers(CONFIG, layers, IMAGE_ID, rootfs)
    assert (
        refused.value.message
        == f"the fetched image {IMAGE_ID[:19]} is corrupt or tampered: layer 1 is not " + (sha(UPPER)[:19])
    )


class TamperingEngine(FakeEngine):
    """An engine whose export is altered on its way out."""

    def save(self, ref: str, sink: Sink) -> None:
        buffer = io.BytesIO()
        super().save(ref, buffer)
        sink.write(buffer.getvalue().replace(b'"3.11"', b'"3.12"'))


def test_the_base_store_and_the_archive_command_refuse_a_tampered_export_with_the_one_error(tmp_path: Path) -> None:
    engine = TamperingEngine()
    parts = layer_files(tmp_path, LOWER, UPPER)
    assert engine.load(lambda sink: write_archive(sink, CONFIG, parts, repo_tags=("base:1",))) == IMAGE_ID
    save_file(FakeEngine(images=engine.images, layers=engine.layers, tags=engine.tags), "base:1", tmp_path / "good.tar")
    assert verify_archive(tmp_path / "good.tar") == IMAGE_ID, "the engine's own copy is intact"
    store = LayerStore(tmp_path / "layers")
    with pytest.raises(ArchiveMismatchError, match=f"^the engine's export of base:1 {LAYER_REFUSED}$"):
        export_upstream("base:1", engine, store, tmp_path)
    assert store.get("base-" + sha(UPPER)[7:]) is None, "the tampered layer is not kept"
    with pytest.raises(ArchiveMismatchError, match=f"^the engine's export of demo.tar {LAYER_REFUSED}$"):
        write_archive_file(engine, IMAGE_ID, tmp_path / "demo.tar")
    assert not (tmp_path / "demo.tar").exists()


def test_the_fake_engine_reads_with_the_same_reader(tmp_path: Path) -> None:
    """The fake refuses as dockerd does (an EngineError naming the layer), from what the one reader found."""
    bad = tampered(tmp_path)
    engine = FakeEngine()
    with pytest.raises(EngineError) as refused:
        engine.load(lambda sink: sink.write(bad.read_bytes()))
    assert refused.value.message == (
        f"cannot load the image into Docker: invalid diffID for layer 1: the loaded archive {LAYER_REFUSED}"
    )
    assert isinstance(refused.value.__cause__, ArchiveMismatchError) and engine.images == {}
    assert issubclass(ArchiveMismatchError, RestoreError)
