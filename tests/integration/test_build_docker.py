"""envlock build against the real Docker engine, real mmdebstrap bases and real wheels from PyPI."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from envlock.cli.app import run
from envlock.engine.docker import DockerEngine
from envlock.errors import EngineError, RegistryError
from envlock.image.bases import BaseStore, MmdebstrapBuilder, export_upstream
from envlock.image.build import Builder, BuildOutcome, build_image, load_base
from envlock.image.layers import LayerStore
from envlock.image.plan import plan_image
from envlock.image.registry import HttpRegistry
from envlock.image.wheels import HttpFetcher, WheelCache
from envlock.lock import lockfile
from envlock.lock.layering import light_group
from envlock.lock.project import lock_project
from envlock.lock.recipes import load_recipe
from envlock.lock.spec import Spec, load_spec
from envlock.lock.uv import UvResolver
from tests.integration.localregistry import serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.network]
PROJECT = '[project]\nname = "envlock-it"\ndependencies = ["six==1.16.0", "tabulate==0.9.0"]\n'


@pytest.fixture(scope="session")
def bases(isolated_cache: Path) -> BaseStore:
    """One real base for the whole session, where the CLI looks too (mmdebstrap takes ~20 s)."""
    return BaseStore(isolated_cache / "bases", MmdebstrapBuilder())


@pytest.fixture
def engine() -> Iterator[DockerEngine]:
    engine = DockerEngine()
    yield engine
    for image in engine.client.images.list():
        names = image.tags + [d.split("@")[0] for d in image.attrs.get("RepoDigests", [])]
        if any("envlock-it" in name for name in names):
            engine.client.images.remove(image.id, force=True)


def build(spec: Spec, engine: DockerEngine, cache_root: Path, bases: BaseStore) -> BuildOutcome:
    return build_image(
        lockfile.read(spec.lock_path),
        spec.name,
        "linux/amd64",
        Builder(
            engine=engine,
            cache=WheelCache(cache_root / "wheels", HttpFetcher()),
            layers=LayerStore(cache_root / "layers"),
            bases=bases,
        ),
    )


def test_same_lock_same_image_id_and_the_image_works(
    tmp_path: Path, write_project: Callable[[str], Path], engine: DockerEngine, bases: BaseStore
) -> None:
    spec = load_spec(write_project(PROJECT))
    lock_project(spec, UvResolver(), bases=bases)
    pinned = lockfile.read(spec.lock_path).target("linux/amd64").base
    assert pinned is not None and pinned.debian["python3"].startswith("3.11")
    first = build(spec, engine, tmp_path / "cache", bases)
    assert first.built and first.base_diff_id == pinned.id
    assert engine.image_id(first.reference) == first.image_id

    client = docker.from_env()
    out = client.containers.run(
        first.image_id,
        ["python", "-c", "import six, tabulate; print(six.__version__)"],
        remove=True,
        network_mode="none",
    )
    assert out.decode().strip() == "1.16.0"
    out = client.containers.run(first.image_id, ["tabulate", "--help"], remove=True, network_mode="none")
    assert out.decode().startswith("Usage: tabulate")
    embedded = client.containers.run(first.image_id, ["cat", "/etc/envlock/envlock.lock"], remove=True)
    assert embedded.decode() == spec.lock_path.read_text(encoding="utf-8")

    again = build(spec, engine, tmp_path / "cache", bases)
    assert not again.built and again.image_id == first.image_id

    engine.remove(first.reference)
    engine.remove(first.image_id)
    shutil.rmtree(tmp_path / "cache")
    rebuilt = build(spec, engine, tmp_path / "cache", bases)
    assert rebuilt.built and rebuilt.image_id == first.image_id


def test_two_base_builds_are_identical(bases: BaseStore, tmp_path: Path) -> None:
    recipe = load_recipe("debian-bookworm")
    first = bases.ensure(recipe, "linux/amd64")
    second = BaseStore(tmp_path / "other", MmdebstrapBuilder()).ensure(recipe, "linux/amd64")
    assert first.diff_id == second.diff_id
    assert first.packages == second.packages
    assert first.packages["python3"].startswith("3.11")


def test_cli_build_then_noop(
    write_project: Callable[[str], Path],
    engine: DockerEngine,
    bases: BaseStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = write_project(PROJECT)  # the CLI finds the session's base under ENVLOCK_CACHE_DIR/bases
    assert run(["lock", "-C", str(project)]) == 0
    assert run(["build", "-C", str(project)]) == 0
    assert "built envlock-it:" in capsys.readouterr().out
    assert run(["build", "-C", str(project)]) == 0
    assert "already built: envlock-it:" in capsys.readouterr().out


def test_stale_lock_is_not_built(write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    project = write_project(PROJECT)
    assert run(["lock", "-C", str(project)]) == 0
    (project / "pyproject.toml").write_text(PROJECT.replace("0.9.0", "0.8.10"), encoding="utf-8")
    capsys.readouterr()
    assert run(["build", "-C", str(project)]) == 4
    assert "envlock.lock is stale" in capsys.readouterr().err


def test_engine_down_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(EngineError, match="the Docker engine is not reachable"):
        DockerEngine().image_id("anything")


def test_push_gives_the_same_digest_from_any_machine_and_pulls_back(
    tmp_path: Path, write_project: Callable[[str], Path], engine: DockerEngine, bases: BaseStore
) -> None:
    spec = load_spec(write_project(PROJECT))
    lock_project(spec, UvResolver())
    lock = lockfile.read(spec.lock_path)
    plan = plan_image(lock, spec.name, "linux/amd64")
    with serve_registry(tmp_path / "registry") as address:
        digests = []
        for machine in ("one", "two"):  # two machines: nothing shared but the lock (and the base bytes)
            builder = Builder(
                engine,
                WheelCache(tmp_path / machine / "wheels", HttpFetcher()),
                LayerStore(tmp_path / machine / "layers"),
                bases,
            )
            digests.append(builder.push(plan, HttpRegistry(address), f"{address}/team"))
        assert digests[0] == digests[1]
        assert digests[0].startswith(f"{address}/team/envlock-it@sha256:")

        built = Builder(
            engine,
            WheelCache(tmp_path / "one" / "wheels", HttpFetcher()),
            LayerStore(tmp_path / "one" / "layers"),
            bases,
        ).build(plan)
        engine.remove(built.reference)
        engine.remove(built.image_id)
        assert engine.image_id(built.image_id) is None
        pulled = docker.from_env().images.pull(digests[0])
        assert pulled.id == built.image_id, "pulled by digest, the image is the one we built"


def test_registry_down_is_one_clear_error(
    tmp_path: Path, write_project: Callable[[str], Path], bases: BaseStore
) -> None:
    spec = load_spec(write_project(PROJECT))
    lock_project(spec, UvResolver())
    plan = plan_image(lockfile.read(spec.lock_path), spec.name, "linux/amd64")
    builder = Builder(
        DockerEngine(), WheelCache(tmp_path / "wheels", HttpFetcher()), LayerStore(tmp_path / "layers"), bases
    )
    with pytest.raises(RegistryError, match=r"cannot reach the registry 127\.0\.0\.1:9"):
        builder.push(plan, HttpRegistry("127.0.0.1:9"), "127.0.0.1:9/team")


def test_upstream_base_pinned_by_digest_is_pulled_and_built_on(
    tmp_path: Path, write_project: Callable[[str], Path], engine: DockerEngine, bases: BaseStore
) -> None:
    client = docker.from_env()
    base_image = load_base(bases.ensure(load_recipe("debian-bookworm"), "linux/amd64"), engine)
    with serve_registry(tmp_path / "registry") as address:
        upstream = f"{address}/upstream/envlock-it-debian"
        dockerfile = f"FROM {base_image}\nLABEL dev.envlock.test=upstream-base\n".encode()
        derived, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"{upstream}:12", rm=True)
        client.images.push(upstream, "12")
        digest = client.images.get_registry_data(f"{upstream}:12").id
        ref = f"{upstream}:12@{digest}"
        client.images.remove(derived.id, force=True)
        assert engine.image_id(ref) is None, "the base is now only in the registry"

        project = write_project(PROJECT + f'[tool.envlock]\nbase = "{ref}"\npython = "3.11"\n')
        spec = load_spec(project)
        layers = LayerStore(tmp_path / "cache" / "layers")
        lock_project(spec, UvResolver(), upstream=lambda image: export_upstream(image, engine, layers, tmp_path))
        lock = lockfile.read(spec.lock_path)
        assert lock.base.kind == "image"
        pinned = lock.target("linux/amd64").base
        assert pinned is not None and pinned.debian["python3"].startswith("3.11"), "its Debian packages are locked"
        first = build(spec, engine, tmp_path / "cache", bases)
        out = client.containers.run(first.image_id, ["python", "-c", "import six; print(six.__version__)"], remove=True)
        assert out.decode().strip() == "1.16.0"

        engine.remove(first.reference)
        engine.remove(first.image_id)
        for image in client.images.list(name=upstream):
            client.images.remove(image.id, force=True)
        shutil.rmtree(tmp_path / "cache")
        again = build(spec, engine, tmp_path / "cache", bases)
        assert again.image_id == first.image_id, "pulled again by digest, built again: the same image"


def test_kill_9_mid_build_leaves_no_tag_and_the_next_build_succeeds(
    write_project: Callable[[str], Path], engine: DockerEngine, bases: BaseStore
) -> None:
    project = write_project(PROJECT)
    spec = load_spec(project)
    lock_project(spec, UvResolver(), bases=bases)
    reference = f"envlock-it:{lockfile.read(spec.lock_path).short_hash}"
    envlock = str(Path(sys.executable).with_name("envlock"))
    process = subprocess.Popen([envlock, "build", "-C", str(project)], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "making layer" in line or "loading" in line:
            process.kill()  # SIGKILL: no cleanup handler runs
            break
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert engine.image_id(reference) is None, "no image carries the lock-hash tag unless it is complete"
    done = subprocess.run([envlock, "build", "-C", str(project)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert engine.image_id(reference) is not None


FORGED_PROJECT = '[project]\nname = "envlock-it-forged"\ndependencies = ["six==1.16.0"]\n'


def test_forged_tag_is_rebuilt_and_never_run_in(
    tmp_path: Path, write_project: Callable[[str], Path], engine: DockerEngine, bases: BaseStore
) -> None:
    """`docker commit` of the built image under the lock's tag: build re-tags the real one, run never uses it."""
    project = tmp_path / "exp:colon"  # and a project path with a colon (docker's volume syntax) runs too
    project.mkdir()
    (project / "pyproject.toml").write_text(FORGED_PROJECT, encoding="utf-8")
    spec = load_spec(project)
    lock_project(spec, UvResolver(), bases=bases)
    assert run(["build", "-C", str(project)]) == 0
    reference = f"envlock-it-forged:{lockfile.read(spec.lock_path).short_hash}"
    real = engine.image_id(reference)
    container = engine.client.containers.create(reference, ["true"])
    try:
        container.commit(repository="envlock-it-forged", tag=reference.split(":")[1])
    finally:
        container.remove(force=True)
    forged = str(engine.image_id(reference))
    try:
        assert forged not in ("None", real)
        # run first: the recorded image is not under the tag, so it goes through the content check
        assert run(["run", "-C", str(project), "--", "python", "-c", "print('hi')"]) == 0
        assert engine.image_id(reference) == real
        records = list((project / ".envlock" / "runs").glob("*/record.json"))
        assert records and all(forged not in r.read_text() for r in records)
        engine.tag(forged, "envlock-it-forged", reference.split(":")[1])
        assert run(["build", "-C", str(project)]) == 0
        assert engine.image_id(reference) == real
    finally:
        engine.remove(forged)  # a child of the real image: it goes first


class _Overclaiming(DockerEngine):
    """dockerd as seen by a build that asked just before someone removed the image it was going to reuse."""

    def held_layers(self, diff_ids: list[str]) -> int:
        return len(diff_ids) - 1


def test_adding_a_package_sends_only_the_new_layers_and_a_refused_partial_load_falls_back(
    tmp_path: Path, write_project: Callable[[str], Path], engine: DockerEngine, bases: BaseStore
) -> None:
    spec = load_spec(write_project(PROJECT))
    lock_project(spec, UvResolver(), bases=bases)
    first = build(spec, engine, tmp_path / "cache", bases)
    spec = load_spec(write_project(PROJECT.replace('"]', '", "idna==3.7"]')))
    lock_project(spec, UvResolver(), bases=bases)
    notes: list[str] = []
    cache = WheelCache(tmp_path / "cache" / "wheels", HttpFetcher())
    builder = Builder(engine, cache, LayerStore(tmp_path / "cache" / "layers"), bases, notes.append)
    plan = plan_image(lockfile.read(spec.lock_path), spec.name, "linux/amd64")
    second = builder.build(plan)
    assert second.built and second.image_id != first.image_id
    # Light packages go to groups by wheel size: idna (67 kB) 5, tabulate (35 kB) 6, six (11 kB) 7. Only idna's group
    # and the lock are made (the lock's while idna downloads); idna's group is new, so the lock puts it on top
    # (layout 3): the engine holds base, venv, tabulate's and six's groups, and is sent idna's group and the lock.
    relocked = lockfile.read(spec.lock_path)
    sizes = {p.name: p.wheels[0].size for p in relocked.target("linux/amd64").packages}
    assert [light_group(sizes[name]) for name in ("idna", "tabulate", "six")] == [5, 6, 7]
    assert relocked.target("linux/amd64").layers == ("packages-6", "packages-7", "packages-5")
    made = [note for note in notes if note.startswith("making layer")]
    assert made == ["making layer lock", "making layer packages-5"], notes
    assert any("(2 of 6 layers)" in note for note in notes), notes
    out = docker.from_env().containers.run(second.image_id, ["python", "-c", "import idna, six"], remove=True)
    assert out == b""

    engine.remove(second.reference)
    engine.remove(second.image_id)
    notes.clear()
    # The engine is believed to hold every layer but the last: it lacks the new packages layer, refuses the
    # partial archive, and the full one is sent; the image is the same.
    builder = Builder(_Overclaiming(), cache, LayerStore(tmp_path / "cache" / "layers"), bases, notes.append)
    again = builder.build(plan)
    assert again.built and again.image_id == second.image_id
    assert any("sending every layer" in note for note in notes), notes
