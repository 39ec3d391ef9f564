"""The wheel cache: the lock's files fetched on the host, stored by sha256, verified before every use."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from envlock.errors import DownloadError, HashMismatchError
from envlock.fsutil import exclusive, make_dirs, sha256_file, share
from envlock.lock.credentials import expand, mask, secrets_to_mask
from envlock.lock.resolve import LockedFile
from envlock.report import Progress, no_progress

CHUNK = 1 << 20


@dataclass(frozen=True)
class Response:
    """An open download: the body from `offset` on, and the whole size when the server says it."""

    body: Iterator[bytes]
    offset: int
    total: int | None


class Fetcher(Protocol):
    """Opens a URL for reading, from a byte offset when the server allows it."""

    def open(self, url: str, offset: int) -> contextlib.AbstractContextManager[Response]:
        """The response; `Response.offset` says where it really starts (0 if the range was ignored)."""
        ...


class HttpFetcher:
    """Fetcher over HTTP(S) with requests; credentials come from the spec's index URLs, matched by host.

    URLs and credentials keep their ${VAR} references until a request is made: secrets live only in memory.
    """

    def __init__(self, index_urls: Iterable[str] = (), timeout: float = 60.0) -> None:
        self.index_urls = tuple(index_urls)
        self.credentials: dict[tuple[str, str], tuple[str, str]] = {}
        for url in self.index_urls:
            parts = urlsplit(url)
            if parts.username is not None:
                host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
                self.credentials[(parts.scheme, host)] = (parts.username, parts.password or "")
        self.timeout = timeout
        self._local = threading.local()

    def _session(self) -> object:
        import requests  # noqa: PLC0415

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def shown(self, url: str) -> str:
        """The URL as a message may show it: credentials masked, any expanded secret back as its ${VAR}."""
        return mask(url, secrets_to_mask((*self.index_urls, url)))

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[Response]:
        """GET with a Range header when resuming."""
        import requests  # noqa: PLC0415

        parts = urlsplit(url)
        found = self.credentials.get((parts.scheme, parts.netloc))
        auth = (expand(found[0]), expand(found[1])) if found else None
        parts = urlsplit(expand(url))  # a token in the path (`https://host/${TOKEN}/…`) is filled in here
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        session = self._session()
        try:
            response = session.get(  # type: ignore[attr-defined]
                urlunsplit(parts), headers=headers, auth=auth, stream=True, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise DownloadError(f"cannot fetch {self.shown(url)}: {exc.__class__.__name__}") from exc
        with response:
            if response.status_code not in (200, 206):
                raise DownloadError(f"cannot fetch {self.shown(url)}: HTTP {response.status_code}")
            start = offset if response.status_code == 206 else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            try:
                yield Response(response.iter_content(CHUNK), start, total)
            except requests.RequestException as exc:
                raise DownloadError(f"download of {self.shown(url)} broke off: {exc.__class__.__name__}") from exc


class WheelCache:
    """Content-addressed store: `<root>/sha256/ab/abcdef…`; partial downloads under `<root>/partial/`, one writer
    per entry at a time (a flock on `<root>/locks/<sha256>.lock`)."""

    def __init__(self, root: Path, fetcher: Fetcher, workers: int = 4) -> None:
        self.root = root
        self.fetcher = fetcher
        self.workers = workers

    def path_for(self, sha256: str) -> Path:
        """Where the file with this digest lives once fetched."""
        return self.root / "sha256" / sha256[:2] / sha256

    def verified(self, file: LockedFile) -> Path | None:
        """The cached path if present and intact; a corrupt entry is removed (and so will be fetched again)."""
        path = self.path_for(file.sha256)
        try:
            if sha256_file(path) == file.sha256:
                return path
        except (FileNotFoundError, IsADirectoryError):
            return None
        # Another process may have removed it first; a reader who may not write a shared cache leaves it (the
        # check above keeps its bytes from being used).
        with contextlib.suppress(FileNotFoundError, PermissionError):
            path.unlink()
        return None

    def ensure(self, files: Iterable[LockedFile], progress: Progress = no_progress) -> dict[str, Path]:
        """Every file present and verified, fetching what is missing in parallel; sha256 → path."""
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415  (a no-op build fetches nothing)

        unique = {f.sha256: f for f in files}
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            paths = list(pool.map(lambda f: self._ensure_one(f, progress), unique.values()))
        return dict(zip(unique, paths, strict=True))

    def cached(self, file: LockedFile) -> Path | None:
        """The cached path if the entry exists, its bytes not read (for listings: a use of the bytes `require`s)."""
        path = self.path_for(file.sha256)
        return path if path.is_file() else None

    def require(self, file: LockedFile) -> Path:
        """The cached file, its bytes checked again just before use (they may have changed on disk)."""
        path = self.verified(file)
        if path is None:
            raise HashMismatchError(
                f"{file.name} is missing from the wheel cache or its bytes changed",
                hint="run the command again: envlock fetches it afresh",
            )
        return path

    def _ensure_one(self, file: LockedFile, progress: Progress) -> Path:
        if (path := self.verified(file)) is not None:
            progress(file.name, file.size or 0, file.size)
            return path
        partials, locks = self.root / "partial", self.root / "locks"
        try:
            make_dirs(partials)
            make_dirs(locks)
            # One writer per entry, across threads and processes (parallel builds of one lock share the cache):
            # the lock is held from the first byte to the publish, and the entry is looked for again once held.
            with exclusive(locks / f"{file.sha256}.lock"):
                if (path := self.verified(file)) is not None:
                    progress(file.name, file.size or 0, file.size)
                    return path
                return self._fetch(file, partials / f"{file.sha256}.part", progress)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadError(
                    f"disk full while fetching {file.name} into {self.root}",
                    hint="free some space (or set ENVLOCK_CACHE_DIR elsewhere); the download resumes",
                ) from exc
            raise

    def _fetch(self, file: LockedFile, partial: Path, progress: Progress) -> Path:
        for attempt in (1, 2):
            # A partial already whole (a process killed between download and publish) is not asked for again:
            # a range from its end would be answered 416.
            if not (file.size is not None and partial.is_file() and partial.stat().st_size == file.size):
                self._download(file, partial, progress)
            got = sha256_file(partial)
            if got == file.sha256:
                target = self.path_for(file.sha256)
                make_dirs(target.parent)
                share(partial, target.parent)
                partial.replace(target)
                return target
            partial.unlink()
            if attempt == 2:
                raise HashMismatchError(f"{file.name}: downloaded sha256 {got} is not the locked {file.sha256}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _download(self, file: LockedFile, partial: Path, progress: Progress) -> None:
        if partial.exists() and partial.stat().st_uid != os.getuid():
            # Left by another user of a shared cache (killed mid-download; the entry's lock is ours now): it is
            # not ours to append to, so it is started over.
            partial.unlink()
        offset = partial.stat().st_size if partial.exists() else 0
        if file.size is not None and offset > file.size:
            partial.unlink()
            offset = 0
        with self.fetcher.open(file.url, offset) as response:
            mode = "ab" if response.offset == offset and offset else "wb"
            done = response.offset
            total = file.size if file.size is not None else response.total
            with partial.open(mode) as handle:
                for chunk in response.body:
                    handle.write(chunk)
                    done += len(chunk)
                    progress(file.name, done, total)
                handle.flush()
                os.fsync(handle.fileno())
