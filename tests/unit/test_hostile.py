"""Hostile and unlucky inputs (issue 11): an unreachable engine, a registry off-spec, outputs outside the project."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from envlock.cli.app import run as cli
from envlock.engine.docker import DockerEngine
from envlock.engine.launch import LaunchSpec, bind_mounts
from envlock.errors import EngineError, RegistryError, UsageError
from envlock.image.registry import Blob, HttpRegistry
from envlock.run.runner import project_outputs


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A tiny HTTP server on 127.0.0.1 for the block; yields host:port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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


class RefusingClient:
    images = RefusingImages()


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
