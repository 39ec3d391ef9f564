"""Index credentials: `${VAR}` references stay unexpanded in everything written, and are filled in only at use."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.cli.wiring import Wiring
from envlock.errors import DownloadError, IndexUnreachableError
from envlock.image.wheels import HttpFetcher
from envlock.lock import lockfile
from envlock.lock.credentials import mask, secrets_to_mask
from envlock.lock.export import to_pylock
from envlock.lock.piptools import PipToolsResolver, host_target
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedFile, LockedPackage, ResolveRequest
from envlock.lock.simpleindex import SimpleIndexFinder
from envlock.lock.spec import load_spec
from envlock.lock.targets import Platform, Target, host_platform
from envlock.lock.uv import UvResolver
from envlock.run.gitstate import GitState, save_untracked
from envlock.run.objects import ObjectStore
from envlock.signing import work_tree_of
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


# --- index URLs with secrets are masked in every message ---------------------------------------------------------


def test_mask_shows_urls_as_pip_does_and_expanded_values_as_their_reference() -> None:
    secrets = secrets_to_mask(
        ["https://user:${PASSWORD}@pkgs.example/${TOKEN}/simple", "https://ci:literal-pw@other.example/simple"],
        {"PASSWORD": PASSWORD, "TOKEN": TOKEN},
    )
    assert secrets == {PASSWORD: "${PASSWORD}", TOKEN: "${TOKEN}", "literal-pw": "****"}
    text = (
        f"GET https://user:{PASSWORD}@pkgs.example/{TOKEN}/simple/alpha/ failed; "
        "retried https://ci:literal-pw@other.example/simple/ and "
        f"https://{TOKEN}@third.example/simple (quoted: {TOKEN.replace('-', '%2D')})"
    )
    assert mask(text, secrets) == (
        "GET https://user:${PASSWORD}@pkgs.example/${TOKEN}/simple/alpha/ failed; "
        "retried https://ci:****@other.example/simple/ and "
        "https://${TOKEN}@third.example/simple (quoted: tok%2D0123456789%2Dsecret)"
    )
    assert mask("https://__token__@pkgs.example/simple, https://a:p@ss@h.example/x") == (
        "https://****@pkgs.example/simple, https://a:****@h.example/x"
    ), "without the secrets at hand: a lone user name is a token, a password is masked up to the host"


@pytest.fixture
def uv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """uv's cache in the temp dir: nothing outside it changes."""
    cache = tmp_path / "uv-cache"
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    monkeypatch.setitem(os.environ, "NO_PROXY", "127.0.0.1")
    return cache


def test_a_failing_lock_never_prints_the_expanded_token(
    index_server: tuple[str, list[tuple[str, str]]],
    write_project: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    uv_cache: Path,
) -> None:
    host, seen = index_server
    monkeypatch.setenv("TOKEN", TOKEN)
    monkeypatch.setenv("PASSWORD", PASSWORD)
    project = write_project(
        '[project]\nname = "demo"\ndependencies = ["alpha"]\n'
        f'[tool.envlock]\nindex-url = "http://user:${{PASSWORD}}@{host}/${{TOKEN}}/simple"\n'
    )
    said: list[str] = []
    code = run(["lock", "-C", str(project)], Wiring(resolvers={"uv": UvResolver()}, say=said.append))
    err = capsys.readouterr().err
    assert seen and seen[0][0] == f"/{TOKEN}/simple/alpha/", "the real uv asked the index with the token"
    assert code == 5
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error == [f"error: package 'alpha' was not found on the index (http://user:****@{host}/${{TOKEN}}/simple)"]
    assert TOKEN not in err + "\n".join(said) and PASSWORD not in err + "\n".join(said)
    assert not (project / "envlock.lock").exists() and uv_cache.is_dir(), "uv's cache was the temp dir's"


def test_any_resolver_s_error_is_masked_on_its_way_out(
    write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)
    project = write_project(
        '[project]\nname = "demo"\ndependencies = ["alpha"]\n'
        '[tool.envlock]\nindex-url = "https://pkgs.example/${TOKEN}/simple"\n'
    )
    said = f"cannot reach https://pkgs.example/{TOKEN}/simple/alpha/"
    resolver = FakeResolver({}, error=IndexUnreachableError(said, hint=f"is {TOKEN} valid?", details=(said,)))
    with pytest.raises(IndexUnreachableError) as raised:
        lock_project(load_spec(project), resolver)
    assert raised.value.message == "cannot reach https://pkgs.example/${TOKEN}/simple/alpha/"
    assert raised.value.hint == "is ${TOKEN} valid?" and raised.value.details == (raised.value.message,)
    assert TOKEN not in str(raised.value)


HOST: Platform = "linux/arm64" if host_platform() == "linux/arm64" else "linux/amd64"  # pip-tools: this host only


def test_pip_tools_output_and_the_simple_index_errors_are_masked(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f"echo 'Looking in indexes: https://user:{PASSWORD}@pkgs.example/simple' >&2\n"
        f"echo 'Could not fetch URL https://user:{PASSWORD}@pkgs.example/simple/alpha/: 401' >&2\nexit 1\n",
        encoding="utf-8",
    )
    python.chmod(0o755)
    request = ResolveRequest(
        ("alpha",), Target(HOST, host_target()[1], (2, 36)), f"https://user:{PASSWORD}@pkgs.example/simple"
    )
    with pytest.raises(IndexUnreachableError) as raised:
        PipToolsResolver(python=str(python)).resolve(request)
    assert raised.value.message == "cannot reach the package index https://user:****@pkgs.example/simple"

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://user:{PASSWORD}@127.0.0.1:{port}/simple"
    with pytest.raises(IndexUnreachableError) as found:
        SimpleIndexFinder().files([("alpha", "1.0")], request.target, [url])
    assert (
        found.value.message
        == f"cannot reach the package index http://user:****@127.0.0.1:{port}/simple: ConnectionError"
    )


def test_a_failing_fetch_names_the_url_with_its_references(
    index_server: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, _ = index_server
    monkeypatch.setenv("PASSWORD", PASSWORD)
    monkeypatch.setenv("TOKEN", TOKEN)
    monkeypatch.setitem(os.environ, "NO_PROXY", "127.0.0.1")
    fetcher = HttpFetcher([f"http://user:${{PASSWORD}}@{host}/${{TOKEN}}/simple"])
    for url in (f"http://{host}/${{TOKEN}}/missing.whl", f"http://{host}/{TOKEN}/missing.whl"):
        with pytest.raises(DownloadError) as raised, fetcher.open(url, 0):
            pass
        assert raised.value.message == f"cannot fetch http://{host}/${{TOKEN}}/missing.whl: HTTP 401"


# --- key generate: private folders, and a warning inside a git work tree ------------------------------------------


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The loosest umask: whatever envlock makes private, it makes so itself."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_generate_makes_private_folders_and_warns_inside_a_git_work_tree(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, umask_000: None
) -> None:
    repo = tmp_path / "repo"
    (repo / "shared").mkdir(parents=True)
    (repo / "shared").chmod(0o755)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, capture_output=True)
    key = repo / "shared" / "keys" / "ci" / "signing.pem"
    code, out, said = world(capsys, "key", "generate", "-o", str(key))
    assert code == 0 and out.startswith("key "), said
    assert _mode(key) == 0o600 and _mode(repo / "shared" / "keys") == 0o700 and _mode(key.parent) == 0o700
    assert _mode(repo / "shared") == 0o755, "a folder that was there is left as it was"
    assert said.strip().splitlines()[-1] == (
        f"warning: {key} is inside the git work tree of {repo.resolve()}: never commit it; "
        "add it to .gitignore or keep keys in ~/.config/envlock"
    )

    outside = tmp_path / "keys" / "signing.pem"
    world.said.clear()
    code, _, said = world(capsys, "key", "generate", "-o", str(outside))
    assert code == 0 and "warning" not in said and _mode(outside.parent) == 0o700 and _mode(outside) == 0o600
    assert work_tree_of(outside) is None and work_tree_of(key) == repo.resolve()


def test_links_and_unreadable_files_are_named_with_their_own_reason(tmp_path: Path) -> None:
    _file(tmp_path, "elsewhere.pem", _key_text("-----BEGIN RSA PRIVATE KEY-----"), 0o644)
    (tmp_path / "link.txt").symlink_to(tmp_path / "elsewhere.pem")
    state = GitState(commit="c" * 40, dirty=True, untracked=("gone.txt", "link.txt"))
    saved = save_untracked(state, tmp_path, ObjectStore(tmp_path / "objects"), 1 << 20)
    assert dict(saved.skipped) == {
        "gone.txt": "cannot be read (No such file or directory)",
        "link.txt": "not a regular file (a symlink or special file)",
    }
    assert not saved.saved and not (tmp_path / "objects").exists()
