"""The wheel cache through a fake fetcher: parallel fetch, resume, verification on every read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envlock.errors import DownloadError, HashMismatchError
from envlock.image.wheels import WheelCache
from envlock.lock.resolve import LockedFile
from tests.fakes import FakeFetcher


def locked(name: str, data: bytes) -> LockedFile:
    return LockedFile(name, f"https://files.example/{name}", hashlib.sha256(data).hexdigest(), len(data))


def test_fetch_then_serve_from_cache(tmp_path: Path) -> None:
    a, b = locked("a-1.0-py3-none-any.whl", b"A" * 100), locked("b-2.0-py3-none-any.whl", b"B" * 50)
    fetcher = FakeFetcher({a.url: b"A" * 100, b.url: b"B" * 50})
    cache = WheelCache(tmp_path, fetcher)
    seen: list[tuple[str, int, int | None]] = []
    paths = cache.ensure([a, b, a], progress=lambda *event: seen.append(event))
    assert paths[a.sha256].read_bytes() == b"A" * 100
    assert paths[a.sha256] == tmp_path / "sha256" / a.sha256[:2] / a.sha256
    assert len(fetcher.calls) == 2, "a file asked for twice is fetched once"
    assert (a.name, 100, 100) in seen
    cache.ensure([a, b])
    assert len(fetcher.calls) == 2, "second time: all from the cache"


def test_interrupted_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    file = locked("big-1.0-py3-none-any.whl", data)
    fetcher = FakeFetcher({file.url: data}, break_after={file.url: 300})
    cache = WheelCache(tmp_path, fetcher)
    with pytest.raises(DownloadError, match="broke off"):
        cache.ensure([file])
    assert (tmp_path / "partial" / f"{file.sha256}.part").stat().st_size == 300
    assert cache.ensure([file])[file.sha256].read_bytes() == data
    assert fetcher.calls[-1] == (file.url, 300)


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path) -> None:
    data = b"x" * 500
    file = locked("x-1.0-py3-none-any.whl", data)
    fetcher = FakeFetcher({file.url: data}, break_after={file.url: 200}, honour_ranges=False)
    cache = WheelCache(tmp_path, fetcher)
    with pytest.raises(DownloadError):
        cache.ensure([file])
    assert cache.ensure([file])[file.sha256].read_bytes() == data


def test_corrupt_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    file = locked("c-1.0-py3-none-any.whl", b"good bytes")
    fetcher = FakeFetcher({file.url: b"good bytes"})
    cache = WheelCache(tmp_path, fetcher)
    path = cache.ensure([file])[file.sha256]
    path.write_bytes(b"tampered!!")
    assert cache.ensure([file])[file.sha256].read_bytes() == b"good bytes"
    assert len(fetcher.calls) == 2


def test_index_serving_other_bytes_is_refused_by_name(tmp_path: Path) -> None:
    file = locked("d-1.0-py3-none-any.whl", b"what was locked")
    cache = WheelCache(tmp_path, FakeFetcher({file.url: b"something else"}))
    with pytest.raises(HashMismatchError, match=r"d-1\.0-py3-none-any\.whl: downloaded sha256 [0-9a-f]{64} is not"):
        cache.ensure([file])
    assert not cache.path_for(file.sha256).exists()
    assert not list((tmp_path / "partial").iterdir())


def test_require_refuses_changed_bytes(tmp_path: Path) -> None:
    file = locked("e-1.0-py3-none-any.whl", b"original")
    cache = WheelCache(tmp_path, FakeFetcher({file.url: b"original"}))
    cache.ensure([file])
    assert cache.require(file).read_bytes() == b"original"
    cache.path_for(file.sha256).write_bytes(b"changed!")
    with pytest.raises(
        HashMismatchError, match=r"e-1\.0-py3-none-any\.whl is missing from the wheel cache or its bytes"
    ):
        cache.require(file)
