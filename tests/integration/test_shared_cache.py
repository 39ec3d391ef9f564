"""One cache shared by a Unix group, with real uids (setpriv) and the real engine: A builds, B runs A's image
without rebuilding and builds another lock, A reuses B's layers, a user outside the group runs but cannot build,
concurrent builds of one lock agree, and gc from roots keeps what another live project needs, frees a dead one's."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from envlock.engine.launch import CONTAINER_USER
from envlock.fsutil import make_dirs, share
from envlock.image.bases import BaseStore, MmdebstrapBuilder
from envlock.lock.recipes import load_recipe
from envlock.lock.targets import host_platform

pytestmark = [pytest.mark.docker, pytest.mark.network]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
GROUP, USERS, OUTSIDER = "envlock-share", ("envlock-a", "envlock-b"), "envlock-out"
ONE = '[project]\nname = "envlock-share-one"\ndependencies = ["six==1.16.0"]\n'
TWO = '[project]\nname = "envlock-share-two"\ndependencies = ["six==1.16.0", "tabulate==0.9.0"]\n'
THREE = '[project]\nname = "envlock-share-three"\ndependencies = ["tabulate==0.9.0"]\n'


def _ids(name: str) -> tuple[int, int]:
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="module")
def users() -> dict[str, tuple[int, int]]:
    """The group and its two members, and one user outside it: made once, only when missing."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    for name in (*USERS, OUTSIDER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            group = ["-N", "-g", GROUP] if name in USERS else ["-U"]
            subprocess.run(["useradd", "-M", *group, name], check=True)
    return {name: _ids(name) for name in (*USERS, OUTSIDER)}


@pytest.fixture(scope="module")
def place(users: dict[str, tuple[int, int]], isolated_cache: Path) -> Iterator[Path]:
    """A folder every test user can reach, with the shared cache (2775, group envlock-share) seeded by root with
    the session's base: copied, as root would publish it there (mmdebstrap again would take a minute and more)."""
    top = Path(tempfile.mkdtemp(prefix="envlock-share-", dir="/tmp"))
    top.chmod(0o755)
    cache = top / "cache"
    cache.mkdir()
    shutil.chown(cache, group=GROUP)
    cache.chmod(0o2775)
    # the session's base (built there at most once, and then there for every later test), published into the
    # shared cache the way the base store does: its folder made with the cache's mode, its files group-readable
    base = BaseStore(isolated_cache / "bases", MmdebstrapBuilder()).ensure(
        load_recipe("debian-bookworm"), host_platform()
    )
    shared_bases = cache / "bases"
    make_dirs(shared_bases)
    for source in (base.tar, base.tar.with_suffix(".json")):  # the metadata last: a base counts once it is there
        target = shared_bases / source.name
        shutil.copyfile(source, target)
        share(target, shared_bases)
    try:
        yield top
    finally:
        client = docker.from_env()
        for repository in ("envlock-share-one", "envlock-share-two", "envlock-share-three"):
            for image in client.images.list(name=repository):
                client.images.remove(image.id, force=True)
        shutil.rmtree(top, ignore_errors=True)


LOCKS: dict[str, str] = {}


def project(place: Path, name: str, text: str, owner: str) -> Path:
    """A project folder owned by `owner`, locked (as root: locking is not what is tested here; a pyproject locked
    once before gets that lock, not a second resolution against PyPI)."""
    folder = place / name
    folder.mkdir()
    (folder / "pyproject.toml").write_text(text)
    if text in LOCKS:
        (folder / "envlock.lock").write_text(LOCKS[text])
    else:
        env = {**os.environ, "ENVLOCK_CACHE_DIR": str(place / "cache")}
        command = [ENVLOCK, "lock", "-C", str(folder)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        LOCKS[text] = (folder / "envlock.lock").read_text()
    subprocess.run(["chown", "-R", f"{owner}:", str(folder)], check=True)
    return folder


def command_as(place: Path, user: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """envlock as `user` (the group's members in the group, everyone in the Docker socket's group), and its env."""
    uid, gid = _ids(user)
    docker_gid = Path("/var/run/docker.sock").stat().st_gid
    groups = f"{grp.getgrnam(GROUP).gr_gid},{docker_gid}" if user in USERS else str(docker_gid)
    home = place / f"home-{user}"
    home.mkdir(exist_ok=True)
    shutil.chown(home, user=uid)
    env = {**os.environ, "HOME": str(home), "ENVLOCK_CACHE_DIR": str(place / "cache"), "XDG_CONFIG_HOME": str(home)}
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={groups}", "--", ENVLOCK, *args], env


def as_user(place: Path, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    command, env = command_as(place, user, *args)
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def image_of(folder: Path) -> str:
    (entry,) = json.loads((folder / ".envlock" / "images.json").read_text()).values()
    return str(entry["image-id"])


def layer_files(place: Path) -> dict[str, int]:
    return {p.name: p.stat().st_uid for p in (place / "cache" / "layers").glob("*.tar")}


def test_one_cache_shared_by_a_group(place: Path, users: dict[str, tuple[int, int]]) -> None:
    a_one = project(place, "a-one", ONE, "envlock-a")
    built = as_user(place, "envlock-a", "build", "-C", str(a_one))
    assert built.returncode == 0, built.stderr
    first = image_of(a_one)
    layers = place / "cache" / "layers"
    for entry in layers.iterdir():
        if entry.suffix in (".tar", ".json"):
            assert entry.stat().st_mode & 0o040, f"{entry} is readable by the group"
    assert layers.stat().st_mode & 0o2070 == 0o2070, "folders are group-writable and setgid"

    # B runs A's image from a copy of the project: no rebuild, nothing made.
    b_one = project(place, "b-one", ONE, "envlock-b")
    before = layer_files(place)
    # getpass.getuser() answers for a uid the image's /etc/passwd does not know (torch.compile's cache folder)
    code = "import getpass, six; print(six.PY3, getpass.getuser())"
    ran = as_user(place, "envlock-b", "run", "-C", str(b_one), "--", "python", "-c", code)
    assert ran.returncode == 0, ran.stderr
    assert f"True {CONTAINER_USER}" in ran.stdout and "making layer" not in ran.stderr and layer_files(place) == before
    (record,) = (b_one / ".envlock" / "runs").glob("*/record.json")
    assert json.loads(record.read_text())["image_id"] == first

    # B builds another lock into the same cache; A then builds that lock from B's layers.
    b_two = project(place, "b-two", TWO, "envlock-b")
    assert as_user(place, "envlock-b", "build", "-C", str(b_two)).returncode == 0
    made_by_b = {name for name, uid in layer_files(place).items() if uid == users["envlock-b"][0]}
    assert made_by_b, "B made the tabulate layer"
    a_two = project(place, "a-two", TWO, "envlock-a")
    again = as_user(place, "envlock-a", "build", "-C", str(a_two))
    assert again.returncode == 0 and "making layer" not in again.stderr, again.stderr
    assert image_of(a_two) == image_of(b_two)

    # Outside the group: runs an existing image, refused (one line, exit 32) when a build must write.
    out_one = project(place, "out-one", ONE, OUTSIDER)
    ran = as_user(place, OUTSIDER, "run", "-C", str(out_one), "--", "python", "-c", "print('hi')")
    assert ran.returncode == 0 and "hi" in ran.stdout, ran.stderr
    out_three = project(place, "out-three", THREE, OUTSIDER)
    refused = as_user(place, OUTSIDER, "build", "-C", str(out_three))
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 32, refused.stderr
    assert len(errors) == 1 and f"(owner root, group {GROUP}, mode 2775) is not writable by you" in errors[0]

    # Concurrent builds by A and B of one new lock: one image ID, no error.
    a_three, b_three = project(place, "a-three", THREE, "envlock-a"), project(place, "b-three", THREE, "envlock-b")
    both = []
    for user, folder in (("envlock-a", a_three), ("envlock-b", b_three)):
        command, env = command_as(place, user, "build", "-C", str(folder))
        both.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in both:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert image_of(a_three) == image_of(b_three)

    # gc from roots, run by A in its project: B's live projects keep their needs.
    shutil.rmtree(a_two)
    for project_dir in (out_one, out_three, a_three, b_three):
        shutil.rmtree(project_dir)
    old = time.time() - 3600
    for path in (place / "cache").rglob("*"):
        os.utime(path, (old, old), follow_symlinks=False)  # past gc's grace period
    tabulate_layers = {n for n in made_by_b if (place / "cache" / "layers" / n).exists()}
    kept = as_user(place, "envlock-a", "gc", "-C", str(a_one))
    assert kept.returncode == 0, kept.stderr
    assert all((place / "cache" / "layers" / n).exists() for n in tabulate_layers), "B's live project keeps them"
    assert docker.from_env().images.get(image_of(b_two))

    shutil.rmtree(b_two)
    freed = as_user(place, "envlock-a", "gc", "-C", str(a_one))
    assert freed.returncode == 0, freed.stderr
    assert f"dead root: {b_two} is gone" in freed.stdout
    assert not any((place / "cache" / "layers" / n).exists() for n in tabulate_layers)
    assert first in {i.id for i in docker.from_env().images.list(name="envlock-share-one")}
