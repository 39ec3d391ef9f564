"""Index credentials: `${VAR}` references stay unexpanded in everything written, and are filled in only at use."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from envlock.image.wheels import HttpFetcher
from envlock.lock import lockfile
from envlock.lock.export import to_pylock
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedFile, LockedPackage, ResolveRequest
from envlock.lock.spec import load_spec
from envlock.lock.targets import Target
from envlock.lock.uv import UvResolver
from tests.fakes import FakeResolver

TOKEN = "tok-0123456789-secret"
PASSWORD = "pw-9876543210-secret"


def test_a_token_in_the_index_path_is_never_written(
    write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)
    project = write_project(
        '[project]\nname = "demo"\ndependencies = ["alpha"]\n'
        '[tool.envlock]\nindex-url = "https://pkgs.example/${TOKEN}/simple"\n'
    )
    url = f"https://pkgs.example/{TOKEN}/files/alpha-1.0-py3-none-any.whl"
    wheel = LockedFile("alpha-1.0-py3-none-any.whl", url, "a" * 64, 10)
    resolver = FakeResolver({"linux/amd64": [LockedPackage("alpha", "1.0", (wheel,))]})
    lock_project(load_spec(project), resolver)
    assert resolver.requests[0].index_url == f"https://pkgs.example/{TOKEN}/simple"  # expanded for use
    text = (project / "envlock.lock").read_text(encoding="utf-8")
    assert TOKEN not in text and "https://pkgs.example/${TOKEN}/files/alpha" in text
    lock = lockfile.read(project / "envlock.lock")
    assert TOKEN not in to_pylock(lock)


def fake_uv(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in for uv that records its argv and environment and answers with an empty pylock."""
    record = tmp_path / "uv-call.json"
    script = tmp_path / "uv"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
        "out = sys.argv[sys.argv.index('--output-file') + 1]\n"
        "open(out, 'w').write('lock-version = \"1.0\"\\ncreated-by = \"fake\"\\npackages = []\\n')\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), record


def test_uv_gets_the_credentials_in_its_environment_not_its_command_line(tmp_path: Path) -> None:
    uv_bin, record = fake_uv(tmp_path)
    request = ResolveRequest(
        requirements=("alpha",),
        target=Target("linux/amd64", "3.11", (2, 36)),
        index_url=f"https://user:{PASSWORD}@pkgs.example/simple",
        extra_index_urls=(f"https://pkgs.example/{TOKEN}/simple",),
    )
    UvResolver(uv_bin).resolve(request)
    call = json.loads(record.read_text(encoding="utf-8"))
    argv = " ".join(call["argv"])
    assert PASSWORD not in argv and TOKEN not in argv and "--index-url" not in argv
    assert call["env"]["UV_INDEX_URL"] == request.index_url
    assert call["env"]["UV_EXTRA_INDEX_URL"] == request.extra_index_urls[0]


@pytest.fixture
def index_server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An index serving one file to `user:PASSWORD` under /TOKEN/; records (path, authorization) per request."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            seen.append((self.path, auth))
            expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
            ok = auth == expected and self.path == f"/{TOKEN}/alpha.whl"
            body = b"wheel bytes" if ok else b""
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}", seen
    server.shutdown()


def test_build_fetches_with_the_expanded_credentials(
    index_server: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, seen = index_server
    monkeypatch.setenv("PASSWORD", PASSWORD)
    monkeypatch.setenv("TOKEN", TOKEN)
    monkeypatch.setitem(os.environ, "NO_PROXY", "127.0.0.1")
    fetcher = HttpFetcher([f"http://user:${{PASSWORD}}@{host}/simple"])
    assert PASSWORD not in repr(fetcher.credentials)  # kept as the reference until a request is made
    with fetcher.open(f"http://{host}/${{TOKEN}}/alpha.whl", 0) as response:
        assert b"".join(response.body) == b"wheel bytes"
    assert seen[-1][0] == f"/{TOKEN}/alpha.whl"
