"""Hostile and unlucky inputs (issue 11): an unreachable engine, a registry off-spec, outputs outside the project."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from envlock.cli.app import run as cli
from envlock.engine.docker import DockerEngine, load_timeout
from envlock.engine.launch import LaunchSpec, bind_mounts
from envlock.errors import BuildError, EngineError, EngineTimeoutError, RegistryError, UsageError
from envlock.fsutil import owned_prefix, sweep_stale
from envlock.image.bases import BaseStore
from envlock.image.build import Builder, build_image
from envlock.image.catalog import Built, image_for_lock, record_image
from envlock.image.layers import LayerStore, write_layer
from envlock.image.registry import Blob, HttpRegistry
from envlock.image.wheels import HttpFetcher, WheelCache
from envlock.lock import lockfile
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedFile, LockedPackage
from envlock.lock.spec import load_spec
from envlock.run.runner import project_outputs
from tests.fakes import FakeBaseBuilder, FakeEngine, FakeImage, FakeResolver, project_with_wheels, stores
from tests.servers import QuietServer
from tests.unit.test_build import run_build
from tests.wheelmaker import build_wheel


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A tiny HTTP server on 127.0.0.1 for the block; yields host:port."""
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def endless(sink: BinaryIO) -> None:
    """An archive bigger than any pipe buffer: the producer blocks unless someone reads or closes the pipe."""
    for _ in range(64):
        sink.write(b"\0" * (1 << 20))


def test_load_with_the_engine_down_fails_in_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    started = time.monotonic()
    with pytest.raises(EngineError, match="not reachable"):
        DockerEngine().load(endless)
    assert time.monotonic() - started < 10


class RefusingImages:
    """docker-py's images collection of an engine that fails before reading the archive."""

    def load(self, data: Iterator[bytes]) -> list[Any]:
        import docker.errors  # noqa: PLC0415

        raise docker.errors.APIError("500 Server Error: no space left on device")


class Api:
    """docker-py's low-level client: only the timeout it reads per request."""

    timeout = 60


class RefusingClient:
    images = RefusingImages()
    api = Api()


class SlowImages:
    """An engine that reads the whole archive, then takes longer to answer than the client waits."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.waited: list[float] = []

    def load(self, data: Iterator[bytes]) -> list[Any]:
        import requests  # noqa: PLC0415

        for _ in data:
            pass
        self.waited.append(self.api.timeout)
        raise requests.ReadTimeout("UnixHTTPConnectionPool(host='localhost', port=None): Read timed out.")


class SlowClient:
    def __init__(self) -> None:
        self.api = Api()
        self.images = SlowImages(self.api)


def test_a_load_that_times_out_is_called_a_timeout_and_waits_by_its_size() -> None:
    client = SlowClient()
    with pytest.raises(EngineTimeoutError) as raised:
        DockerEngine(client).load(lambda sink: sink.write(b"x" * 1024), size=4_000_000_000)
    assert raised.value.message == "cannot load the image into Docker: the Docker engine did not answer within 260 s"
    assert raised.value.exit_code == 7
    assert client.images.waited == [load_timeout(4_000_000_000)] == [260.0]
    assert client.api.timeout == 60, "the client's own timeout is put back"


def test_load_refused_before_reading_does_not_hang() -> None:
    started = time.monotonic()
    with pytest.raises(EngineError, match="no space left"):
        DockerEngine(RefusingClient()).load(endless)
    assert time.monotonic() - started < 10


def test_registry_202_without_location_is_a_registry_error() -> None:
    class NoLocation(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve(NoLocation) as host, pytest.raises(RegistryError, match="no upload location"):
        HttpRegistry(host).put_blob("team/demo", Blob("sha256:" + "a" * 64, 3, data=b"abc"))


@pytest.mark.parametrize("declared", ["/etc/outside", "../sibling/out", "out/../../escape", "."])
def test_outputs_outside_the_project_are_refused(tmp_path: Path, declared: str) -> None:
    with pytest.raises(UsageError, match="inside the project"):
        project_outputs(tmp_path, (declared,))


def test_outputs_inside_the_project_are_kept_relative(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "link-out").symlink_to(tmp_path.parent)
    assert project_outputs(tmp_path, ("model.pt", str(tmp_path / "out"), "model.pt")) == ("model.pt", "out")
    with pytest.raises(UsageError):
        project_outputs(tmp_path, ("link-out/x",))


def test_run_with_an_output_outside_refuses_before_anything_runs(
    write_project: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project('[project]\nname = "demo"\ndependencies = ["filelock"]\n')
    code = cli(["run", "-C", str(project), "--output", str(tmp_path / "elsewhere"), "--", "true"])
    err = capsys.readouterr().err
    # `run` passes its command's status through, so its own usage error exits 125 and names code 2.
    assert (code, "inside the project" in err, "elsewhere 2:" in err) == (125, True, True)
    assert not (project / ".envlock").exists(), "no record, no image: refused up front"


def test_project_path_with_a_colon_is_one_mount(tmp_path: Path) -> None:
    project = tmp_path / "exp:2024"
    project.mkdir()
    spec = LaunchSpec("sha256:" + "e" * 64, ["true"], "c", project, {}, "0:0", gpus=False, mounts=(tmp_path,))
    mounts = bind_mounts(spec)
    assert [(m["Source"], m["Target"], m["Type"]) for m in mounts] == [
        (str(project), "/work", "bind"),
        (str(tmp_path), str(tmp_path), "bind"),
    ]


def test_flipped_byte_in_a_cached_layer_is_remade_not_failing_forever(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    first = run_build(spec, FakeEngine(), cache, layers, bases)
    tar = max(layers.root.glob("*.tar"), key=lambda p: p.stat().st_size)
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    later = tar.stat().st_mtime_ns + 1_000_000_000  # as any later write: coarse clocks may not have moved yet
    os.utime(tar, ns=(later, later))
    engine = FakeEngine()
    again = run_build(spec, engine, cache, layers, bases)
    assert again.image_id == first.image_id and again.built
    assert tar.read_bytes() != bytes(data), "the damaged entry was remade"


def test_verified_layers_are_not_hashed_again(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    store = LayerStore(tmp_path / "layers")
    made = store.put("k", lambda out: write_layer(tree, out, 0))
    tmp_path = store.root
    meta = json.loads((tmp_path / "k.json").read_text())
    assert meta["verified"][0] == made.size
    assert store.get("k") == made
    (tmp_path / "k.json").write_text(json.dumps({**meta, "diff_id": "sha256:" + "0" * 64}))
    assert store.get("k") is not None, "same (size, mtime, inode): trusted without hashing"
    (tmp_path / "k.tar").write_bytes(b"x" * made.size)
    os.utime(tmp_path / "k.tar", ns=(1, 1))
    assert store.get("k") is None and not (tmp_path / "k.tar").exists()


def test_scratch_of_a_dead_process_is_swept_at_once(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{owned_prefix('image-')}abc"
    theirs = tmp_path / f"{owned_prefix('image-').replace(str(os.getpid()), str(dead.pid))}abc"
    foreign = tmp_path / f"image-{dead.pid}-00000000-abc"
    for path in (mine, theirs, foreign):
        path.mkdir()
    assert sweep_stale(tmp_path, "image-") == [theirs]
    assert mine.exists() and foreign.exists(), "a live owner's, or another host's, is left to the age rule"


class WheelServer(BaseHTTPRequestHandler):
    """Serves one wheel slowly, with ranges, as an index's file host does."""

    body = b""

    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        if start >= len(self.body):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        for i in range(start, len(self.body), 64):  # slowly: the four builds overlap
            self.wfile.write(self.body[i : i + 64])
            time.sleep(0.002)


def test_parallel_cold_cache_builds_of_one_lock_all_succeed(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    wheel_file = build_wheel(tmp_path, "alpha", "1.0")
    WheelServer.body = wheel_file.read_bytes()
    with serve(WheelServer) as host:
        url = f"http://{host}/files/{wheel_file.name}"
        locked = LockedFile(wheel_file.name, url, hashlib.sha256(WheelServer.body).hexdigest(), len(WheelServer.body))
        project = write_project('[project]\nname = "demo"\ndependencies = ["alpha"]\n')
        lock_project(load_spec(project), FakeResolver({"linux/amd64": [LockedPackage("alpha", "1.0", (locked,))]}))
        lock_path = project / "envlock.lock"
        root = tmp_path / "cache"

        def build() -> str:
            outcome = build_image(
                lockfile.read(lock_path),
                "demo",
                "linux/amd64",
                Builder(
                    engine=FakeEngine(),
                    cache=WheelCache(root / "wheels", HttpFetcher()),
                    layers=LayerStore(root / "layers"),
                    bases=BaseStore(root / "bases", FakeBaseBuilder()),
                ),
            )
            return outcome.image_id

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda _: build(), range(4)))
    assert len(set(ids)) == 1
    assert [p.name for p in (root / "wheels" / "sha256").rglob("*") if p.is_file()] == [locked.sha256]
    assert not list((root / "wheels" / "partial").iterdir())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards (CI runs as root; skipped only where mounting is not permitted)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_disk_full_while_making_a_layer_is_one_build_error(tmp_path: Path, small_disk: Path) -> None:
    wheel_file = build_wheel(tmp_path, "alpha", "1.0", padding=3 << 20)
    data = wheel_file.read_bytes()
    url = f"https://files.example/{wheel_file.name}"
    locked = LockedFile(wheel_file.name, url, hashlib.sha256(data).hexdigest(), len(data))
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = ["alpha"]\n')
    lock_project(load_spec(project), FakeResolver({"linux/amd64": [LockedPackage("alpha", "1.0", (locked,))]}))
    cache, _, bases, _ = stores(tmp_path / "cache", {url: data})
    with pytest.raises(BuildError, match="disk full while building demo") as caught:
        run_build(load_spec(project), FakeEngine(), cache, LayerStore(small_disk / "layers"), bases)
    assert caught.value.exit_code == 22
    assert f"MiB free in {small_disk}" in caught.value.message, "the line names the free space where it was writing"


def test_forged_tag_is_rebuilt_and_never_run(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    first = run_build(spec, engine, cache, layers, bases)
    document = engine.images[first.image_id].document  # `docker commit` of it: same labels, other content
    document["config"]["Env"] = [*document["config"].get("Env", []), "FORGED=1"]
    forged_image = FakeImage(json.dumps(document).encode())
    forged = forged_image.image_id
    engine.images[forged] = forged_image
    engine.tags[first.reference] = forged
    messages: list[str] = []
    again = run_build(spec, engine, cache, layers, bases, report=messages.append)
    assert again.built and again.image_id == first.image_id and engine.tags[first.reference] == first.image_id
    assert any("not this lock's" in m and "rebuilding" in m for m in messages)

    lock_hash = lockfile.read(spec.lock_path).lock_hash
    record_image(spec.project_dir, lock_hash, first.image_id, first.reference, "")
    engine.tags[first.reference] = forged
    builds: list[str] = []

    def build() -> Built:
        builds.append("built")
        return Built(first.image_id, first.reference, "")

    pinned = image_for_lock(lock_hash, first.reference, engine=engine, project_dir=spec.project_dir, build=build)
    assert pinned.image_id == first.image_id and builds == ["built"], "a forged tag is not run in"
    engine.tags[first.reference] = first.image_id
    image_for_lock(lock_hash, first.reference, engine=engine, project_dir=spec.project_dir, build=build)
    assert builds == ["built"], "the recorded image under its tag: the fast path, no build"


class ImageApi:
    """docker-py's low-level API over a few images: the listing filtered by label, and inspect."""

    def __init__(self, held: dict[str, tuple[dict[str, str], list[str]]]) -> None:
        self.held = held
        self.inspected: list[str] = []

    def images(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        label = filters["label"]
        return [{"Id": i, "Labels": labels} for i, (labels, _) in self.held.items() if label in labels]

    def inspect_image(self, image_id: str) -> dict[str, Any]:
        self.inspected.append(image_id)
        return {"Id": image_id, "RootFS": {"Layers": self.held[image_id][1]}}


class ImageClient:
    def __init__(self, api: ImageApi) -> None:
        self.api = api


def test_held_layers_is_the_longest_prefix_among_envlock_images_on_the_same_base() -> None:
    base, venv, torch, small, other = (f"sha256:{c * 64}" for c in "abcde")
    api = ImageApi(
        {
            "sha256:1": ({"dev.envlock.base": base}, [base, venv, torch, small]),
            "sha256:2": ({"dev.envlock.base": other}, [other, venv, torch]),  # another base: not even inspected
            "sha256:3": ({}, [base, venv, torch, small]),  # not envlock's: not listed
        }
    )
    engine = DockerEngine(ImageClient(api))
    assert engine.held_layers([base, venv, torch, other]) == 3
    assert api.inspected == ["sha256:1"]
    assert engine.held_layers([other, venv]) == 2
    assert engine.held_layers(["sha256:" + "f" * 64]) == 0


class DigestRefusal(Exception):
    pass


class EofImages:
    """An engine that reads the whole stream and then finds it cut short."""

    def load(self, data: Iterator[bytes]) -> list[Any]:
        import docker.errors  # noqa: PLC0415

        for _ in data:
            pass
        raise docker.errors.APIError("500 Server Error: unexpected EOF")


class EofClient:
    images = EofImages()
    api = Api()


def test_a_producer_that_refuses_its_own_bytes_is_the_error_reported() -> None:
    def refusing(sink: BinaryIO) -> None:
        sink.write(b"\0" * 1024)
        raise DigestRefusal("layer 3 is not its diff_id")

    with pytest.raises(DigestRefusal, match="not its diff_id"):
        DockerEngine(EofClient()).load(refusing)
