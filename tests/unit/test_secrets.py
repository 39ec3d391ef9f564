"""Index credentials: `${VAR}` references stay unexpanded in everything written, and are filled in only at use."""

from __future__ import annotations

import base64
import json
import os
import stat
import tarfile
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
from envlock.run.gitstate import GitState, save_untracked
from envlock.run.objects import ObjectStore
from tests.fakes import FakeResolver
from tests.unit.test_cli_commands import World
from tests.unit.test_reproduce import committed, last, world

__all__ = ["world"]  # the fixture, shared with test_cli_commands

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


# --- untracked files: private keys and owner-only files are never saved ------------------------------------------

KEY_HEADERS = (
    "-----BEGIN PRIVATE KEY-----",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----BEGIN EC PRIVATE KEY-----",
    "-----BEGIN DSA PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----",
    "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----",
    "-----BEGIN PGP PRIVATE KEY BLOCK-----",
    "PuTTY-User-Key-File-3: ssh-ed25519",
)
KEY_BODY = "MC4CAQAwBQYDK2VwBCIEIHXe0secretkeymaterial0123456789abcdefABCDEF\n"


def _key_text(header: str) -> str:
    return f"# ssh key for the cluster, do not share\n{header}\n{KEY_BODY}-----END KEY-----\n"


def _file(project: Path, name: str, text: str, mode: int) -> Path:
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _objects(project: Path) -> dict[str, tuple[bytes, int]]:
    """Every object in the project's store: sha256 → (bytes, mode)."""
    root = project / ".envlock" / "objects" / "sha256"
    found = {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in root.rglob("*") if p.is_file()}
    return found if root.is_dir() else {}


@pytest.mark.parametrize("header", KEY_HEADERS)
def test_a_private_key_is_never_saved_whatever_its_name(tmp_path: Path, header: str) -> None:
    _file(tmp_path, "notes.txt", _key_text(header), 0o644)
    _file(tmp_path, "helper.py", "A = 1\n", 0o644)
    state = GitState(commit="c" * 40, dirty=True, untracked=("helper.py", "notes.txt"))
    saved = save_untracked(state, tmp_path, ObjectStore(tmp_path / "objects"), 1 << 20)
    assert dict(saved.skipped) == {"notes.txt": "a private key"}
    assert list(saved.saved) == ["helper.py"]
    stored = [p.read_bytes() for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert stored == [b"A = 1\n"], "only the helper's bytes are in the store"


def test_owner_only_files_are_never_saved_and_copies_are_no_wider_than_their_source(tmp_path: Path) -> None:
    _file(tmp_path, ".env", "API_TOKEN=abc\n", 0o600)
    _file(tmp_path, "readonly-mine.cfg", "x = 1\n", 0o400)
    _file(tmp_path, "team.cfg", "team = 1\n", 0o640)
    _file(tmp_path, "open.cfg", "open = 1\n", 0o644)
    state = GitState(commit="c" * 40, dirty=True, untracked=(".env", "open.cfg", "readonly-mine.cfg", "team.cfg"))
    objects = ObjectStore(tmp_path / "objects")
    saved = save_untracked(state, tmp_path, objects, 1 << 20)
    assert dict(saved.skipped) == {
        ".env": "readable only by its owner (mode 600)",
        "readonly-mine.cfg": "readable only by its owner (mode 400)",
    }
    modes = {name: stat.S_IMODE(objects.path(digest).stat().st_mode) for name, digest in saved.saved.items()}
    assert modes == {"team.cfg": 0o440, "open.cfg": 0o444}, "read-only, and never readable by more than the source"


def test_the_same_bytes_already_stored_wider_are_narrowed_never_widened(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    digest = objects.put(b"shared = 1\n", readable=0o644)
    assert stat.S_IMODE(objects.path(digest).stat().st_mode) == 0o444
    assert objects.put(b"shared = 1\n", readable=0o640) == digest
    assert stat.S_IMODE(objects.path(digest).stat().st_mode) == 0o440, "narrowed to what both sources allow"
    objects.put(b"shared = 1\n", readable=0o644)
    assert stat.S_IMODE(objects.path(digest).stat().st_mode) == 0o440, "a wider source never widens it again"
    assert objects.get(digest) == b"shared = 1\n"


def test_a_run_names_the_secrets_it_left_out_and_its_bundle_holds_none(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = committed(world)
    key = _file(project, "notes.txt", _key_text("-----BEGIN OPENSSH PRIVATE KEY-----"), 0o644)
    env = _file(project, "config/.env", "API_TOKEN=abc\n", 0o600)
    _file(project, "team.cfg", "team = 1\n", 0o640)
    code, _, said = world(capsys, "run", "-C", str(project), "-o", "out/metrics.json", "--", "python", "train.py")
    assert code == 0, said
    assert "warning: untracked notes.txt not saved with the run (a private key)" in said
    assert "warning: untracked config/.env not saved with the run (readable only by its owner (mode 600))" in said
    record = last(world)
    assert record.git is not None and list(record.git.saved) == ["team.cfg"]
    assert dict(record.git.skipped) == {
        "config/.env": "readable only by its owner (mode 600)",
        "notes.txt": "a private key",
    }
    assert [data for data, _ in _objects(project).values()] == [b"team = 1\n"]
    assert [mode for _, mode in _objects(project).values()] == [0o440]

    bundle = tmp_path / "run.tar"
    code, _, err = world(capsys, "bundle", record.run_id, "-C", str(project), "-o", str(bundle))
    assert code == 0, err
    with tarfile.open(bundle) as archive:
        contents = b"".join(
            handle.read() for m in archive.getmembers() if m.isfile() and (handle := archive.extractfile(m))
        )
    assert b"team = 1\n" in contents, "the shareable untracked file travels"
    assert KEY_BODY.encode() not in contents and key.read_bytes() not in contents
    assert env.read_bytes() not in contents

    code, out, _ = world(capsys, "reproduce", record.run_id, "-C", str(project))
    assert "not compared: untracked notes.txt: a private key" in out
    assert "not compared: untracked config/.env: readable only by its owner (mode 600)" in out
