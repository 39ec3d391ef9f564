"""`envlock restore` and `envlock archive` through fakes: the engine, the registry by digest, an archive, a rebuild,
each accepted only when it gives the recorded image ID; a tampered archive is refused by name (exit 15)."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from envlock.engine.docker import Sink
from envlock.errors import EngineError, ImageArchiveError, RestoreError
from envlock.image.build import Builder
from envlock.image.plan import LOCK_PATH, ImagePlan, plan_image
from envlock.image.restore import Restored, restore_image, verify_archive, write_archive_file
from envlock.lock import lockfile
from envlock.lock.targets import host_platform
from tests.fakes import FakeEngine, FakeImage, FakeRegistry, project_with_wheels, stores

pytestmark = pytest.mark.skipif(host_platform() != "linux/amd64", reason="the fixtures lock linux/amd64")

REGISTRY = "registry.example:5000/team"


@dataclass
class Built:
    """A project's image, made by the real build into a fake engine, and what a rebuild elsewhere needs."""

    plan: ImagePlan
    served: dict[str, bytes]  # the wheels, by URL
    image_id: str

    def rebuild(self, engine: FakeEngine, root: Path) -> Callable[[], str]:
        """A rebuild from the lock on another machine: that machine's engine, empty caches under root."""
        cache, layers, bases, _ = stores(root, self.served)
        return lambda: Builder(engine, cache, layers, bases).build(self.plan).image_id

    def push(self, registry: FakeRegistry, root: Path) -> str:
        """`envlock build --push`: the image's own blobs and manifest; returns host/repository@sha256:…."""
        cache, layers, bases, _ = stores(root, self.served)
        return Builder(FakeEngine(), cache, layers, bases).push(self.plan, registry, f"{registry.host}/team")


def build(tmp_path: Path, write_project: Callable[[str], Path], engine: FakeEngine, names: list[str]) -> Built:
    """Lock a project depending on `names` and build its image into engine."""
    spec, served = project_with_wheels(tmp_path, write_project, names)
    plan = plan_image(lockfile.read(spec.lock_path), "demo", "linux/amd64")
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    return Built(plan, served, Builder(engine, cache, layers, bases).build(plan).image_id)


def tamper(archive: Path, out: Path, old: bytes, new: bytes) -> None:
    """Copy a docker-archive, replacing `old` by `new` (same length) inside its last layer: the embedded lock."""
    assert len(old) == len(new)
    with tarfile.open(archive) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as target:
        manifest = source.extractfile("manifest.json")
        assert manifest is not None
        victim = json.load(manifest)[0]["Layers"][-1]
        for member in source.getmembers():
            handle = source.extractfile(member) if member.isreg() else None
            data = handle.read() if handle else b""
            if member.name == victim:
                assert old in data
                data = data.replace(old, new)
            target.addfile(member, fileobj=io.BytesIO(data) if member.isreg() else None)


def test_an_image_still_in_the_engine_is_taken_from_there(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    engine = FakeEngine()
    built = build(tmp_path, write_project, engine, ["alpha"])
    reported: list[str] = []
    restored = restore_image(
        built.image_id,
        engine=engine,
        repo_digests=("nowhere.example/x@sha256:" + "0" * 64,),
        rebuild=lambda: pytest.fail("no rebuild when the engine has the image"),
        report=reported.append,
    )
    assert restored == Restored(built.image_id, "engine")
    assert engine.pulls == [] and engine.loads == 1 and reported == [], "nothing pulled, loaded or rebuilt"


def test_a_pushed_image_comes_back_by_digest_into_another_engine(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    built = build(tmp_path, write_project, FakeEngine(), ["alpha", "beta"])
    registry = FakeRegistry()
    digest = built.push(registry, tmp_path / "pusher")
    assert digest.startswith(f"{REGISTRY}/demo@sha256:")

    elsewhere = FakeEngine.with_registry(registry)
    reported: list[str] = []
    restored = restore_image(
        built.image_id, engine=elsewhere, repo_digests=(digest,), reference=built.plan.reference, report=reported.append
    )
    assert restored == Restored(built.image_id, f"registry {digest}")
    assert elsewhere.pulls == [digest] and reported == [f"pulling {digest}"]
    assert elsewhere.image_id(built.plan.reference) == built.image_id, "tagged again, so `envlock run` finds it"
    assert elsewhere.image_id(digest) == built.image_id
    assert elsewhere.read_file(built.plan.reference, "/" + LOCK_PATH).decode() == built.plan.lock_text


def test_a_registry_that_is_gone_or_gives_another_image_is_passed_over(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    first = build(tmp_path / "one", write_project, FakeEngine(), ["alpha"])
    other = build(tmp_path / "two", write_project, FakeEngine(), ["alpha", "beta"])
    registry = FakeRegistry()
    other_digest = other.push(registry, tmp_path / "pusher")
    gone = "gone.example:5000/team/demo@sha256:" + "a" * 64
    engine = FakeEngine.with_registry(registry)
    with pytest.raises(RestoreError) as refused:
        restore_image(first.image_id, engine=engine, repo_digests=(gone, other_digest))
    assert refused.value.exit_code == 15
    message = refused.value.message
    assert f"registry {gone}: cannot pull {gone}: dial tcp: lookup gone.example:5000: no such host" in message
    assert f"registry {other_digest}: gave image {other.image_id[:19]}" in message
    assert "push images (envlock build --push)" in refused.value.hint
    assert engine.tags == {}, "nothing is tagged with the reference when nothing was restored"


def test_archive_is_written_verified_and_restores_into_an_empty_engine(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    engine = FakeEngine()
    built = build(tmp_path, write_project, engine, ["alpha"])
    out = tmp_path / "archives" / "demo.tar"
    out.parent.mkdir()
    assert write_archive_file(engine, built.image_id, out) == built.image_id
    assert [p.name for p in out.parent.iterdir()] == ["demo.tar"], "no partial file is left beside it"
    assert verify_archive(out) == built.image_id

    elsewhere = FakeEngine()
    reported: list[str] = []
    restored = restore_image(
        built.image_id,
        engine=elsewhere,
        archives=(tmp_path / "missing.tar", out),
        reference=built.plan.reference,
        report=reported.append,
    )
    assert restored == Restored(built.image_id, f"archive {out}")
    assert reported == [f"loading archive {out} (verified while it loads)"]
    assert elsewhere.loads == 1 and elsewhere.tags == {built.plan.reference: built.image_id}
    assert elsewhere.layers == engine.layers, "the same layers, byte for byte"


def test_a_tampered_archive_is_refused_with_exit_15(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    engine = FakeEngine()
    built = build(tmp_path, write_project, engine, ["alpha"])
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    write_archive_file(engine, built.image_id, good)
    tamper(good, bad, b'python = "3.11"', b'python = "3.12"')

    with pytest.raises(RestoreError, match=r"is corrupt or tampered: layer .* is not sha256:") as corrupt:
        verify_archive(bad)
    assert corrupt.value.exit_code == 15

    elsewhere = FakeEngine()
    reported: list[str] = []
    with pytest.raises(RestoreError, match=f"could not restore image {built.image_id[:19]}.*tampered") as refused:
        restore_image(built.image_id, engine=elsewhere, archives=(bad,), report=reported.append)
    assert refused.value.exit_code == 15
    assert any(line.startswith(f"refused: archive {bad} is corrupt or tampered") for line in reported)
    # One pass: the load began, the tampered layer was refused before its last chunk and before any manifest.
    assert elsewhere.loads == 1 and elsewhere.images == {} and elsewhere.tags == {}, "nothing loaded"


def test_an_archive_of_another_image_is_not_accepted(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    first = build(tmp_path / "one", write_project, FakeEngine(), ["alpha"])
    engine = FakeEngine()
    other = build(tmp_path / "two", write_project, engine, ["alpha", "beta"])
    archive = tmp_path / "other.tar"
    write_archive_file(engine, other.image_id, archive)
    with pytest.raises(RestoreError, match=f"holds image {other.image_id[:19]}, not {first.image_id[:19]}"):
        restore_image(first.image_id, engine=FakeEngine(), archives=(archive,))


def test_a_rebuild_elsewhere_gives_the_same_image_and_is_accepted(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    built = build(tmp_path, write_project, FakeEngine(), ["alpha", "beta"])
    elsewhere = FakeEngine()
    reported: list[str] = []
    restored = restore_image(
        built.image_id,
        engine=elsewhere,
        archives=(tmp_path / "missing.tar",),
        rebuild=built.rebuild(elsewhere, tmp_path / "elsewhere"),
        reference=built.plan.reference,
        report=reported.append,
    )
    assert restored == Restored(built.image_id, "rebuild")
    assert reported == ["rebuilding from the lock"]
    assert elsewhere.image_id(built.plan.reference) == built.image_id


def test_a_rebuild_that_gives_another_image_is_refused(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    first = build(tmp_path / "one", write_project, FakeEngine(), ["alpha"])
    other = build(tmp_path / "two", write_project, FakeEngine(), ["alpha", "beta"])
    engine = FakeEngine()
    with pytest.raises(RestoreError, match=f"rebuild from the lock: gave image {other.image_id[:19]}"):
        restore_image(first.image_id, engine=engine, rebuild=other.rebuild(engine, tmp_path / "elsewhere"))


def test_archiving_an_image_the_engine_lacks_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "demo.tar"
    with pytest.raises(EngineError, match="No such image"):
        write_archive_file(FakeEngine(), "sha256:" + "b" * 64, out)
    assert list(tmp_path.iterdir()) == []


@dataclass
class ExportingEngine(FakeEngine):
    """An engine whose export is changed on its way out: bytes replaced, or cut off by a failure after some."""

    replace: tuple[bytes, bytes] | None = None
    fail_after: int | None = None  # bytes written before the export fails

    def save(self, ref: str, sink: Sink) -> None:
        buffer = io.BytesIO()
        super().save(ref, buffer)
        data = buffer.getvalue()
        if self.replace:
            data = data.replace(*self.replace)
        if self.fail_after is not None:
            sink.write(data[: self.fail_after])
            raise EngineError("cannot export: the Docker engine is not reachable")
        for at in range(0, len(data), self.save_chunk):
            sink.write(data[at : at + self.save_chunk])


def test_an_archive_is_checked_as_it_is_written_not_read_again(
    tmp_path: Path, write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass: the layers are hashed on their way to the file; the file is never opened for reading."""
    engine = FakeEngine(save_chunk=1000)  # small pieces: tar headers and layers split across writes
    built = build(tmp_path, write_project, engine, ["alpha", "beta"])
    out = tmp_path / "demo.tar"
    opened: list[str] = []
    real_open, real_tar_open = Path.open, cast(Any, tarfile.open)

    def watched(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self.name.endswith(".partial"):
            opened.append(mode)
        return real_open(self, mode, *args, **kwargs)

    def watched_tar(name: Any = None, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened.append(f"tar {Path(name).name if name else 'stream'} {mode}")
        return real_tar_open(name, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", watched)
    monkeypatch.setattr(tarfile, "open", watched_tar)
    assert write_archive_file(engine, built.image_id, out) == built.image_id
    monkeypatch.undo()
    assert opened == ["wb"], "the partial file is written, never opened for reading: checked as it is written"
    assert verify_archive(out) == built.image_id


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"replace": (b'python = "3.11"', b'python = "3.12"')}, RestoreError, "corrupt or tampered: layer"),
        ({"fail_after": 5000}, EngineError, "not reachable"),
        ({"fail_after": 0}, EngineError, "not reachable"),
    ],
)
def test_a_bad_or_broken_export_leaves_no_file_and_no_thread(
    tmp_path: Path,
    write_project: Callable[[str], Path],
    change: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    engine = ExportingEngine(**change)
    built = build(tmp_path, write_project, engine, ["alpha"])
    out = tmp_path / "archives" / "demo.tar"
    out.parent.mkdir()
    with pytest.raises(error, match=message):
        write_archive_file(engine, built.image_id, out)
    assert list(out.parent.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "envlock-archive-check"]


def test_an_export_that_is_not_an_archive_is_refused(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    engine = ExportingEngine()
    built = build(tmp_path, write_project, engine, ["alpha"])

    class Garbage(FakeEngine):
        def save(self, ref: str, sink: Sink) -> None:
            for _ in range(300):  # more than a pipe holds: the writer must not block on a reader that gave up
                sink.write(b"not a tar archive " * 4096)

    out = tmp_path / "demo.tar"
    with pytest.raises(RestoreError, match="not a readable image archive"):
        write_archive_file(Garbage(images=engine.images, layers=engine.layers), built.image_id, out)
    assert not out.exists() and not list(tmp_path.glob(".demo.tar*"))


def test_restoring_an_archive_sends_only_the_layers_the_engine_lacks(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    engine = FakeEngine()
    built = build(tmp_path, write_project, engine, ["alpha"])
    out = tmp_path / "demo.tar"
    write_archive_file(engine, built.image_id, out)
    engine.remove(built.image_id)
    assert restore_image(built.image_id, engine=engine, archives=(out,)).image_id == built.image_id
    assert engine.sent_layers[-1] == len(engine.images[built.image_id].diff_ids), "nothing held: every layer"
    # Another image on the same stack but the last layer: only that layer travels.
    stack = engine.images[built.image_id].diff_ids
    engine.remove(built.image_id)
    other = FakeImage(json.dumps({"rootfs": {"diff_ids": stack[:-1]}}).encode())
    engine.images[other.image_id] = other
    assert restore_image(built.image_id, engine=engine, archives=(out,)).image_id == built.image_id
    assert engine.sent_layers[-1] == 1


def test_an_export_of_many_metadata_sized_members_is_refused_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifest and configs are kept in memory while an export is checked; a crafted one cannot make that unbounded."""
    monkeypatch.setattr("envlock.engine.archive.KEPT_MAX", 10_000)
    crafted = io.BytesIO()
    with tarfile.open(fileobj=crafted, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(20):
            data = b"{}" + b" " * 998
            info = tarfile.TarInfo(f"{index}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

    class Crafted(FakeEngine):
        def save(self, ref: str, sink: Sink) -> None:
            sink.write(crafted.getvalue())

    with pytest.raises(ImageArchiveError) as refused:
        write_archive_file(Crafted(), "sha256:" + "b" * 64, tmp_path / "demo.tar")
    assert refused.value.message == (
        "the engine's export of demo.tar is not a readable image archive: more than 0 MiB of metadata-sized members"
    )
    assert list(tmp_path.iterdir()) == []
