"""A pulled run's bundle against a real registry (Debian's distribution 2.8 on 127.0.0.1; no container engine):
streamed to disk in chunks with flat memory, cut off past its declared size, checked by digest on the way, refused
over the pull cap by `envlock pull` itself, and nothing left behind by any refusal."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from envlock.errors import RegistryError
from envlock.evidence.published import BUNDLE_TYPE, RECORD_TYPE, RUN_TYPE
from envlock.image.referrers import Layer, push_artifact
from envlock.image.registry import Blob, HttpRegistry, push
from tests.integration.localregistry import serve_registry

ENVLOCK = str(Path(sys.executable).with_name("envlock"))
REPO = "team/pulled"
BIG = 64 << 20
USER = "envlock-a"  # a second user (scripts/setup.sh makes it, for the shared-cache tests)


def _blob(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)


def _stored(storage: Path, digest: str) -> Path:
    """The file the registry keeps a blob's bytes in (its filesystem driver's layout)."""
    (path,) = (storage / "data").rglob(f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data")
    return path


def test_a_blob_streams_to_disk_with_flat_memory_and_a_lying_one_leaves_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "registry"
    with serve_registry(storage) as address:
        registry = HttpRegistry(address)
        blob = _blob(os.urandom(BIG))
        registry.put_blob(REPO, blob)
        out = tmp_path / "run.tar"

        tracemalloc.start()
        assert registry.blob_into(REPO, blob.digest, out, blob.size)
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        whole = registry.blob(REPO, blob.digest)  # the old way: the whole blob in memory
        whole_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert whole is not None and len(whole) == BIG
        del whole
        print(f"\n{BIG >> 20} MiB blob: peak Python memory {whole_peak >> 20} MiB read whole, "
              f"{streamed_peak / (1 << 20):.1f} MiB streamed")  # fmt: skip
        assert out.stat().st_size == BIG and streamed_peak < 8 << 20 <= whole_peak

        out.unlink()
        with pytest.raises(RegistryError, match=f"sent more than the {BIG // 2} bytes declared"):
            registry.blob_into(REPO, blob.digest, out, BIG // 2)
        assert not out.exists()

        stored = _stored(storage, blob.digest)
        data = bytearray(stored.read_bytes())
        data[BIG // 3] ^= 0x01
        stored.write_bytes(bytes(data))
        with pytest.raises(RegistryError, match="gave a blob that is not"):
            registry.blob_into(REPO, blob.digest, out, blob.size)
        assert not out.exists()


def _pull(ref: str, project: Path, cache: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENVLOCK_CACHE_DIR": str(cache), **environ}
    command = [ENVLOCK, "pull", ref, "-C", str(project)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_envlock_pull_refuses_a_bundle_over_the_cap_and_one_not_its_digest_leaving_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "registry"
    with serve_registry(storage) as address:
        registry = HttpRegistry(address)
        config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        image = push(registry, REPO, "v1", config, []).partition("@")[2]
        record, bundle = _blob(b'{"run_id": "x"}'), _blob(os.urandom(1 << 20))
        artifact = push_artifact(
            registry, REPO, image, RUN_TYPE, [Layer(RECORD_TYPE, record), Layer(BUNDLE_TYPE, bundle)], annotations={}
        )
        ref = f"{address}/{REPO}@{artifact}"
        project, cache = tmp_path / "project", tmp_path / "cache"

        over = _pull(ref, project, cache, ENVLOCK_PULL_MAX_BYTES="512K")
        assert over.returncode == 31, over.stderr
        assert over.stderr.splitlines()[:2] == [
            f"error: refused: the run's bundle {bundle.digest[:19]} is {1 << 20} bytes, over the pull cap of "
            f"{512 << 10} bytes",
            "hint: if you trust its source and have the space, raise the cap: ENVLOCK_PULL_MAX_BYTES=… (K/M/G/T "
            "suffixes are powers of 1024; default 4G)",
        ]

        stored = _stored(storage, bundle.digest)
        data = bytearray(stored.read_bytes())
        data[12345] ^= 0x01
        stored.write_bytes(bytes(data))
        tampered = _pull(ref, project, cache)
        assert tampered.returncode == 11, tampered.stderr
        assert f"error: the registry {address} gave a blob that is not {bundle.digest[:19]}: refused" in tampered.stderr

        assert not project.exists(), "nothing written into the project"
        assert [p for p in (cache / "tmp").rglob("*") if p.is_file()] == [], "no partial file in envlock's scratch"


def test_a_user_who_cannot_write_the_cache_is_told_so_in_one_line() -> None:
    """A shared cache this user may only read: the pull has no scratch there, and says whose folder it is."""
    place = Path(tempfile.mkdtemp(prefix="envlock-pull-", dir="/tmp"))
    try:
        place.chmod(0o755)
        cache = place / "cache"
        cache.mkdir(mode=0o755)  # root's, not the user's group's
        (place / "project").mkdir(mode=0o777)
        home = place / "home"
        home.mkdir()
        uid = pwd.getpwnam(USER).pw_uid
        gid = pwd.getpwnam(USER).pw_gid
        shutil.chown(home, user=uid)
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "ENVLOCK_CACHE_DIR": str(cache)}
        ref = f"127.0.0.1:9/{REPO}@sha256:{'a' * 64}"  # never asked: the scratch comes first
        command = [
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
            ENVLOCK, "pull", ref, "-C", str(place / "project"),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 32, done.stderr
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
        assert f"error: the cache folder {cache} (owner root, group root, mode 0755) is not writable by you, and a " \
            "pull must write there" == line  # fmt: skip
        assert list(cache.iterdir()) == [] and list((place / "project").iterdir()) == []
    finally:
        shutil.rmtree(place, ignore_errors=True)
