"""Shared fixtures: sample projects copied from tests/data into a temp dir."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
# The markers of tests that need the engine, a cluster, emulation or a browser: all of them are `slow` (the fast
# tier is `-m "not slow"`); a test that is slow for another reason carries @pytest.mark.slow itself.
SLOW_MARKERS = ("docker", "slurm", "emulation", "runtimes", "heavy", "browser")
# A seeded base older than this is not used: it was built from the Debian mirror as it was then.
SEED_BASE_MAX_AGE = 3 * 24 * 3600


@pytest.fixture
def sample(tmp_path: Path) -> Callable[[str], Path]:
    """Copy tests/data/projects/NAME to a temp dir and return it."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(DATA / "projects" / name, target)
        return target

    return copy


@pytest.fixture
def write_project(tmp_path: Path) -> Callable[[str], Path]:
    """Write a pyproject.toml with the given text into a fresh project dir."""

    def write(text: str) -> Path:
        project = tmp_path / "project"
        project.mkdir(exist_ok=True)
        (project / "pyproject.toml").write_text(text, encoding="utf-8")
        return project

    return write


@pytest.fixture(autouse=True, scope="session")
def no_background_compile() -> Iterator[None]:
    """No detached bytecode-compile container after each build or first run: the suite builds and removes many
    images in quick succession (a running compile holds its image). tests/unit/test_bytecode.py and the
    integration test of the compile switch it back on for themselves."""
    before = os.environ.get("ENVLOCK_PRECOMPILE")
    os.environ["ENVLOCK_PRECOMPILE"] = "0"
    yield
    if before is None:
        os.environ.pop("ENVLOCK_PRECOMPILE", None)
    else:
        os.environ["ENVLOCK_PRECOMPILE"] = before


@pytest.fixture(autouse=True, scope="session")
def isolated_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's config (envlock's trust store, default keys) in a session temp dir: a test never trusts, nor
    writes, a key of the user running the tests."""
    config = tmp_path_factory.mktemp("xdg-config")
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(config)
    yield config
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


def seed_dir() -> Path | None:
    """Where test sessions keep what each would otherwise fetch or build again, the same: `$ENVLOCK_TEST_SEED`, else
    ~/.cache/envlock-tests; `ENVLOCK_TEST_SEED=off` for none (every session starts cold, as on a fresh machine)."""
    configured = os.environ.get("ENVLOCK_TEST_SEED", "")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    from platformdirs import user_cache_path  # noqa: PLC0415

    return user_cache_path("envlock-tests")


def _copy_new(source: Path, target: Path) -> None:
    """Copy `source` to `target` unless it is there; atomically, as sessions of other users may read the seed."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copyfile(source, partial)
    partial.replace(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seed_cache(seed: Path, cache: Path) -> None:
    """Copy the seed's wheels (content-addressed: checked again on use) and its recent bases into a fresh cache.
    Copies, not links: a test may damage a cache entry on purpose, and that must not reach the seed."""
    for wheel in sorted((seed / "wheels" / "sha256").glob("*/*")):
        if not wheel.name.startswith("."):
            _copy_new(wheel, cache / "wheels" / "sha256" / wheel.parent.name / wheel.name)
    for meta in sorted((seed / "bases").glob("*.json")):
        tar = meta.with_suffix(".tar")
        if tar.is_file() and time.time() - meta.stat().st_mtime < SEED_BASE_MAX_AGE:
            _copy_new(tar, cache / "bases" / tar.name)
            _copy_new(meta, cache / "bases" / meta.name)  # last: a base counts only once its metadata is there


def keep_in_seed(cache: Path, seed: Path) -> None:
    """Copy the session's new wheels (those whose bytes match their name) and finished bases into the seed."""
    for wheel in sorted((cache / "wheels" / "sha256").glob("*/*")):
        target = seed / "wheels" / "sha256" / wheel.parent.name / wheel.name
        if wheel.is_file() and not target.exists() and _sha256(wheel) == wheel.name:
            _copy_new(wheel, target)
    for meta in sorted((cache / "bases").glob("*.json")):
        tar = meta.with_suffix(".tar")
        if tar.is_file() and not (seed / "bases" / meta.name).exists():
            _copy_new(tar, seed / "bases" / tar.name)
            _copy_new(meta, seed / "bases" / meta.name)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing): one xdist worker at a time."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """envlock's cache (wheels, layers, bases) in a session temp dir: tests never touch the user's cache. It starts
    with the test seed's wheels and bases (see seed_dir), and what the session fetched or built goes back there.
    Under pytest-xdist the workers of one run share it (in the run's temp dir, above each worker's own): a wheel
    fetched, a layer made or a base built by one is there for the other, as in a cache shared by two users (envlock
    takes its own locks for that); the first worker seeds it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        cache = tmp_path_factory.mktemp("envlock-cache")
    else:
        cache = tmp_path_factory.getbasetemp().parent / "envlock-cache"
        cache.mkdir(exist_ok=True)
    seed = seed_dir()
    if seed is not None:
        with _exclusive(cache.with_suffix(".seeding")):
            seed_cache(seed, cache)
    before = os.environ.get("ENVLOCK_CACHE_DIR")
    os.environ["ENVLOCK_CACHE_DIR"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("ENVLOCK_CACHE_DIR", None)
    else:
        os.environ["ENVLOCK_CACHE_DIR"] = before
    if seed is not None:
        with _exclusive(cache.with_suffix(".seeding")):
            keep_in_seed(cache, seed)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the engine, a cluster, emulation or a browser are `slow`; the tests that need the arm64 base under
    qemu run last: it is built meanwhile (see arm64_base_meanwhile)."""
    for item in items:
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("emulation") is not None)  # stable: the rest keep order


KEEPER = "envlock-test-keep"
# Under pytest-xdist (scripts/test.sh: `-n 2`) the engine tests run in two groups, each on one worker, one test after
# the other, the two groups beside each other; every other test goes wherever a worker is free (the unit tests ran
# beside themselves before: scripts/test.sh runs them under Debian's Python at the same time). The tests that build,
# run, push, remove (by ID) or restore examples/digits from its committed lock: each module names its images on its
# own, but one lock gives one image ID under every name, and `docker rmi -f ID`, which several of them do on purpose
# (the image gone from the engine), takes the image from under any other name. The other engine tests make small
# images whose locks match one another (a project's name is not in its lock: six alone gives one image ID in several
# modules), each removed by ID when its test ends. No lock of one group is a lock of the other. A module whose locks
# are its own (pins no other module uses) says so (`LOCKS_OF_ITS_OWN = True` at its top) and is a group by itself:
# its tests one after the other (its module fixtures hold an image), beside any other group, on whichever worker is
# free first.
EXAMPLE_GROUP = "example-image"
ENGINE_GROUP = "engine"


def _module_group(module: object) -> str | None:
    """The group of a test module's tests (see EXAMPLE_GROUP): None when they touch no engine."""
    marks = getattr(module, "pytestmark", [])
    if not any(mark.name == "docker" for mark in (marks if isinstance(marks, list) else [marks])):
        return None
    if getattr(module, "LOCKS_OF_ITS_OWN", False) is True:
        return str(getattr(module, "__name__", module))
    return EXAMPLE_GROUP if _module_uses_the_example(module) else ENGINE_GROUP


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown where it is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's scheduler for this suite: a group's tests (see EXAMPLE_GROUP) are one unit of work, sent to
    one worker; any other test is a unit of its own. (`--dist loadgroup` would do it from marks, but it renames each
    test after its group, which pytest 9.2's node ids no longer take: the name is kept, the group is found here.)"""
    import importlib  # noqa: PLC0415

    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415

    groups: dict[str, str | None] = {}

    def group_of(path: str) -> str | None:
        if path not in groups:
            name = path.removesuffix(".py").replace("/", ".")
            engine = name.startswith("tests.integration.")  # where every engine test is
            groups[path] = _module_group(importlib.import_module(name)) if engine else None
        return groups[path]

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid.split("::", 1)[0]) or nodeid

    return GroupScheduling(config, log)


def _module_uses_the_example(module: object) -> bool:
    """Whether a test module copies examples/digits (see tests/integration/example.py)."""
    return hasattr(module, "digits_repo") or str(getattr(module, "EXAMPLE", "")).endswith("examples/digits")


def _builds_the_example(item: pytest.Item) -> bool:
    """Whether the test's module builds examples/digits in the engine (see tests/integration/example.py)."""
    uses = _module_uses_the_example(getattr(item, "module", None))
    return uses and item.get_closest_marker("docker") is not None and item.get_closest_marker("emulation") is None


@pytest.fixture(autouse=True, scope="module")
def example_layers_kept_for_the_module(request: pytest.FixtureRequest) -> None:
    """Keep the example's layers (example_layers_kept) from the first module that builds it: under pytest-xdist the
    worker that runs no such module never builds the kept image."""
    items = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    if any(_builds_the_example(item) for item in items):
        request.getfixturevalue("example_layers_kept")


@pytest.fixture(scope="session")
def example_layers_kept(
    request: pytest.FixtureRequest, isolated_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """When several test modules build the example, one image of it stays in the engine for the session: each
    module removes its `digits` images when it ends, and the next then loads only the layers that differ (2 of 9)
    instead of ~490 MB. The kept image is the example relocked for linux/amd64 alone (same pins, another lock
    layer), under a name of its own: its ID is no test's, so no test removes it, nor finds it in its way."""
    from tests.integration.example import EXAMPLE  # noqa: PLC0415

    modules = {item.nodeid.split("::")[0] for item in request.session.items if _builds_the_example(item)}
    if len(modules) < 2:
        yield
        return
    project = tmp_path_factory.mktemp("example-kept")
    for name in ("pyproject.toml", "train.py", "envlock.lock"):
        shutil.copy(EXAMPLE / name, project / name)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text().replace("[tool.envlock]", f'[tool.envlock]\nname = "{KEEPER}"', 1)
    pyproject.write_text(text.replace('platforms = ["linux/amd64", "linux/arm64"]', 'platforms = ["linux/amd64"]'))
    envlock = str(Path(sys.executable).with_name("envlock"))
    for command in ("lock", "build"):  # a failure here only costs time: the tests build what they need themselves
        subprocess.run([envlock, command, "-C", str(project)], capture_output=True, check=False)
    try:
        yield
    finally:
        import docker  # noqa: PLC0415

        client = docker.from_env()
        for image in client.images.list(name=KEEPER):
            client.images.remove(image.id, force=True)


@pytest.fixture(autouse=True, scope="session")
def arm64_base_meanwhile(request: pytest.FixtureRequest, isolated_cache: Path) -> Iterator[None]:
    """When emulation tests are selected, build the arm64 base (minutes under qemu, one core) in the background
    from the start, while the other tests mostly wait on the engine and the network. Whoever needs it before it is
    done waits on the base store's lock instead of building it again."""
    from envlock.lock.targets import emulated  # noqa: PLC0415

    wanted = any(item.get_closest_marker("emulation") for item in request.session.items)
    if not wanted or not emulated("linux/arm64") or shutil.which("mmdebstrap") is None:
        yield
        return
    envlock = Path(sys.executable).with_name("envlock")
    log = (isolated_cache / "arm64-base.log").open("w")
    build = subprocess.Popen(
        [str(envlock), "base", "build", "debian-bookworm", "--platform", "linux/arm64"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ENVLOCK_CACHE_DIR": str(isolated_cache)},
    )
    try:
        yield
    finally:
        try:
            build.wait(timeout=900)
        except subprocess.TimeoutExpired:
            build.kill()
            build.wait()
        log.close()
