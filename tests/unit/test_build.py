"""`envlock build` through fakes: plan, no-op, tag only after a verified load, same inputs → same ID."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from envlock.errors import DownloadError, EngineError, EngineTimeoutError, EnvlockError, LockfileError
from envlock.fsutil import sha256_file
from envlock.image.bases import BaseStore
from envlock.image.build import Builder, BuildOutcome, build_image
from envlock.image.catalog import read_images
from envlock.image.layers import LayerStore
from envlock.image.plan import ImagePlan, image_config, make_layers, plan_image
from envlock.image.provenance import image_statement, write_image_attestation
from envlock.image.wheels import Response, WheelCache
from envlock.lock import lockfile
from envlock.lock.cuda import CPU
from envlock.lock.layering import light_group, light_group_by_name
from envlock.lock.project import LockOptions, lock_project
from envlock.lock.recipes import Recipe, load_recipe
from envlock.lock.resolve import LockedFile, LockedPackage
from envlock.lock.spec import Spec, load_spec
from envlock.lock.targets import host_platform
from envlock.report import Report, silent
from envlock.signing import canonical, generate_key, open_envelope
from tests.fakes import FakeBaseBuilder, FakeEngine, FakeFetcher, FakeResolver, project_with_wheels, stores

pytestmark = pytest.mark.skipif(host_platform() != "linux/amd64", reason="the fixtures lock linux/amd64")


def run_build(
    spec: Spec,
    engine: FakeEngine,
    cache: WheelCache,
    layers: LayerStore,
    bases: BaseStore,
    *,
    no_cache: bool = False,
    report: Report = silent,
) -> BuildOutcome:
    lock = lockfile.read(spec.lock_path)
    builder = Builder(engine=engine, cache=cache, layers=layers, bases=bases, report=report)
    return build_image(lock, spec.name, "linux/amd64", builder, no_cache=no_cache)


def test_build_then_noop(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "beta"])
    cache, layers, bases, builder = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    first = run_build(spec, engine, cache, layers, bases)
    assert first.built and first.reference == f"demo:{lockfile.read(spec.lock_path).short_hash}"
    assert engine.tags[first.reference] == first.image_id
    second = run_build(spec, engine, cache, layers, bases)
    assert not second.built and second.image_id == first.image_id
    assert engine.loads == 1 and builder.builds == 1


def test_same_lock_same_image_id_from_empty_caches(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "beta"])
    ids = []
    for attempt in ("one", "two"):
        cache, layers, bases, _ = stores(tmp_path / attempt, served)
        ids.append(run_build(spec, FakeEngine(), cache, layers, bases).image_id)
    assert ids[0] == ids[1]


def test_no_cache_rebuilds_to_the_same_id(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    first = run_build(spec, engine, cache, layers, bases)
    again = run_build(spec, engine, cache, layers, bases, no_cache=True)
    assert again.built and again.image_id == first.image_id and engine.loads == 2


def test_failed_or_interrupted_load_leaves_no_tag(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    for failure in (EngineError("cannot load the image into Docker: disk full"), KeyboardInterrupt()):
        engine = FakeEngine(fail_load=failure)
        with pytest.raises(type(failure)):
            run_build(spec, engine, cache, layers, bases)
        assert engine.tags == {}
    assert run_build(spec, FakeEngine(), cache, layers, bases).built, "the next build succeeds"


def test_layers_go_by_stability_cuda_frameworks_heavy_then_light_groups(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    names = ["torch", "nvidia-cudnn-cu12", "six", "idna", "triton", "nvidia-nccl-cu12"]
    spec, _ = project_with_wheels(tmp_path, write_project, names, padding={"idna": 100_000})
    plan = plan_image(lockfile.read(spec.lock_path), "demo", "linux/amd64")
    # CUDA libraries, then frameworks, one layer each by name; the light ones in groups by wheel size, biggest first.
    assert [layer.label for layer in plan.layers] == [
        "venv", "nvidia-cudnn-cu12", "nvidia-nccl-cu12", "torch", "triton", "packages-5", "packages-7", "lock",
    ]  # fmt: skip
    assert [[w.name for w in layer.wheels] for layer in plan.layers[5:7]] == [
        ["idna-1.0-py3-none-any.whl"],
        ["six-1.0-py3-none-any.whl"],
    ]


def _sized_lock(sizes: dict[str, int], layout: int = 2) -> lockfile.Lock:
    """A layout 2 lock of one wheel per package, of these sizes (planning reads no wheel)."""
    packages = tuple(
        LockedPackage(
            name,
            "1.0",
            (LockedFile(f"{name.replace('-', '_')}-1.0-py3-none-any.whl", f"https://x/{name}", "0" * 64, size),),
        )
        for name, size in sorted(sizes.items())
    )
    targets = (lockfile.TargetLock("linux/amd64", "x86_64-manylinux_2_36", CPU, packages),)
    base = lockfile.BaseLock("debian-bookworm", "recipe", "0" * 64)
    return lockfile.Lock("3.11", base, (), (), 315532800, targets, "sha256:x", "fake", "0", image_layout=layout)


def test_other_heavy_packages_go_biggest_wheel_first_above_cuda_and_frameworks() -> None:
    mib = 1 << 20
    sizes = {"numpy": 17 * mib, "pyarrow": 55 * mib, "pandas": 12 * mib, "hf-xet": 4 * mib, "scipy": 41 * mib}
    sizes |= {"torch": 900 * mib, "triton": 200 * mib, "nvidia-cudnn-cu12": 660 * mib, "nvidia-nccl-cu12": 190 * mib}
    labels = [layer.label for layer in plan_image(_sized_lock(sizes), "demo", "linux/amd64").layers]
    assert labels == [
        "venv", "nvidia-cudnn-cu12", "nvidia-nccl-cu12", "torch", "triton",
        "pyarrow", "scipy", "numpy", "pandas", "hf-xet", "lock",
    ]  # fmt: skip
    # a new heavy package goes where its size puts it: the ones bigger than it keep their layers and chain below it
    without = _sized_lock({name: size for name, size in sizes.items() if name != "scipy"})
    fewer = [layer.label for layer in plan_image(without, "demo", "linux/amd64").layers]
    assert fewer[:6] == labels[:6] and "scipy" not in fewer


def test_a_lock_that_names_no_layout_keeps_the_layers_it_was_built_with() -> None:
    """Locks written before layouts were recorded keep layout 1 (other heavy packages by name, light ones by the
    hash of their name), so their image ID never moves with an envlock upgrade; layout 2 keeps its order too."""
    mib = 1 << 20
    sizes = {"numpy": 17 * mib, "pyarrow": 55 * mib, "scipy": 41 * mib, "six": 11_000, "idna": 70_000}
    old = replace(_sized_lock(sizes), image_layout=None)
    labels = [layer.label for layer in plan_image(old, "demo", "linux/amd64").layers]
    assert labels[:4] == ["venv", "numpy", "pyarrow", "scipy"], "layout 1: by name"
    groups = sorted({light_group_by_name("six"), light_group_by_name("idna")})
    assert labels[4:-1] == [f"packages-{g}" for g in groups]
    new = [layer.label for layer in plan_image(_sized_lock(sizes), "demo", "linux/amd64").layers]
    assert new[:4] == ["venv", "pyarrow", "scipy", "numpy"], "layout 2: biggest first"
    assert old.lock_hash != _sized_lock(sizes).lock_hash, "the layout is part of what the lock hash covers"
    assert "image-layout" not in lockfile.dumps(old) and "\nimage-layout = 2\n" in lockfile.dumps(_sized_lock(sizes))


def test_a_lock_naming_a_layout_this_envlock_cannot_build_is_refused(tmp_path: Path) -> None:
    lock = replace(_sized_lock({"six": 11_000}), input_hash="sha256:" + "0" * 64)
    path = tmp_path / "envlock.lock"
    path.write_text(lockfile.dumps(lock))
    assert lockfile.read(path) == lock, "layout 2 reads back"
    path.write_text(lockfile.dumps(lock).replace("\nimage-layout = 2\n", "\nimage-layout = 4\n"))
    with pytest.raises(
        LockfileError, match=r"environment.image-layout: 4 is not a layout this envlock builds.*upgrade"
    ):
        lockfile.read(path)


def test_light_groups_are_power_of_two_bands_of_wheel_size() -> None:
    mib = 1 << 20
    sizes = [4 * mib - 1, 2 * mib, 2 * mib - 1, mib, 64 << 10, (64 << 10) - 1, 32 << 10, (32 << 10) - 1, 1, 0, None]
    assert [light_group(size) for size in sizes] == [0, 0, 1, 1, 5, 6, 6, 7, 7, 7, 7]
    assert light_group(40 * mib) == 0, "a big wheel past the own layers' limit goes to the lowest group"


def test_one_light_package_added_bumped_or_removed_remakes_one_group(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    """alpha and gamma share the 256-512 KiB group, tqdm joins six's (the smallest): the other groups keep their keys;
    a bump that carries alpha's wheel into the next band re-makes the group it left and the one it joins."""
    names = ["torch", "alpha", "gamma", "requests", "six", "delta", "beta"]
    sizes = {"alpha": 300_000, "gamma": 300_000, "requests": 70_000, "delta": 1_500_000, "beta": 40_000}
    spec, _ = project_with_wheels(tmp_path, write_project, names, padding=sizes)
    base = plan_image(lockfile.read(spec.lock_path), "demo", "linux/amd64")
    spec, _ = project_with_wheels(tmp_path / "added", write_project, [*names, "tqdm"], padding=sizes)
    added = plan_image(lockfile.read(spec.lock_path), "demo", "linux/amd64")
    spec, _ = project_with_wheels(tmp_path / "grown", write_project, names, padding={**sizes, "alpha": 600_000})
    grown = plan_image(lockfile.read(spec.lock_path), "demo", "linux/amd64")
    spec, _ = project_with_wheels(tmp_path / "removed", write_project, [n for n in names if n != "gamma"], "1.0", sizes)
    removed = plan_image(lockfile.read(spec.lock_path), "demo", "linux/amd64")
    bumped_lock = uploaded(lockfile.read(spec.lock_path), "beta", datetime(2026, 11, 1, tzinfo=UTC))
    bumped = plan_image(bumped_lock, "demo", "linux/amd64")

    def keys(plan: ImagePlan) -> dict[str, str]:
        return {layer.label: layer.key for layer in plan.layers if layer.label != "lock"}

    def changed(one: ImagePlan, other: ImagePlan) -> set[str]:
        return {label for label in keys(one) | keys(other) if keys(one).get(label) != keys(other).get(label)}

    groups = ["packages-1", "packages-3", "packages-5", "packages-6", "packages-7"]
    assert list(keys(base)) == ["venv", "torch", *groups]
    assert changed(base, added) == {"packages-7"} and changed(base, removed) == {"packages-3"}
    assert changed(removed, bumped) == {"packages-6"}
    assert changed(base, grown) == {"packages-2", "packages-3"}


def test_other_platform_is_refused_clearly(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    lock = lockfile.read(spec.lock_path)
    with pytest.raises(EnvlockError, match="has no platform 'linux/arm64'"):
        build_image(lock, "demo", "linux/arm64", Builder(FakeEngine(), cache, layers, bases))


def test_lock_pins_the_base_and_build_refuses_another(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, builder = stores(tmp_path / "cache", served)
    lock_project(
        spec,
        FakeResolver({"linux/amd64": lockfile.read(spec.lock_path).target("linux/amd64").packages}),
        bases=bases,
        options=LockOptions(upgrade=True),
    )
    pinned = lockfile.read(spec.lock_path).target("linux/amd64").base
    assert pinned is not None and pinned.debian == {"python3": "3.11.2-1+b1"}
    assert run_build(spec, FakeEngine(), cache, layers, bases).built

    builder.python_version = "3.11.2-6+deb12u9"  # the mirror moved; another machine builds the base today
    elsewhere = BaseStore(tmp_path / "elsewhere", builder)
    with pytest.raises(
        EnvlockError, match=r"the Debian mirror moved \(python3 3\.11\.2-1\+b1 -> 3\.11\.2-6\+deb12u9\)"
    ):
        run_build(spec, FakeEngine(), cache, layers, elsewhere)


def test_system_packages_reach_the_base_builder(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    project = write_project(
        '[project]\nname = "demo"\ndependencies = ["alpha"]\n[tool.envlock]\nsystem-packages = ["libgomp1"]\n'
    )
    _, _, bases, builder = stores(tmp_path / "cache", {})
    lock_project(load_spec(project), FakeResolver({"linux/amd64": []}), bases=bases)
    assert builder.recipes[-1].system_packages == ("libgomp1",)


def test_scratch_of_a_killed_build_is_swept_by_the_next(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    old = [layers.root / ".making-x1", bases.root / ".building-y2", tmp_path / "cache" / "tmp" / "image-z3"]
    fresh = layers.root / ".making-now"
    for path in [*old, fresh]:
        path.mkdir(parents=True)
        (path / "part.tar").write_bytes(b"half")
    for path in old:
        os.utime(path, (1, 1))
    run_build(spec, FakeEngine(), cache, layers, bases)
    assert not any(path.exists() for path in old)
    assert fresh.exists(), "a scratch dir that may belong to a running build is left alone"


def test_lock_without_mmdebstrap_still_locks_and_says_the_base_is_not_pinned(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    project = write_project('[project]\nname = "demo"\ndependencies = ["alpha"]\n')
    messages: list[str] = []
    bases = BaseStore(tmp_path / "bases", FakeBaseBuilder(available=False))
    outcome = lock_project(load_spec(project), FakeResolver({"linux/amd64": []}), bases=bases, report=messages.append)
    assert outcome.lock.target("linux/amd64").base is None
    assert any("mmdebstrap is not installed" in m and "not pinned" in m for m in messages)


def test_damaged_cache_metadata_is_remade_not_a_traceback(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, builder = stores(tmp_path / "cache", served)
    first = run_build(spec, FakeEngine(), cache, layers, bases)
    for meta in [*layers.root.glob("*.json"), *bases.root.glob("*.json")]:
        meta.write_text("{ damaged")
    again = run_build(spec, FakeEngine(), cache, layers, bases)
    assert again.image_id == first.image_id and builder.builds == 2
    (spec.project_dir / ".envlock").mkdir(exist_ok=True)
    (spec.project_dir / ".envlock" / "images.json").write_text("not json")
    assert read_images(spec.project_dir) == {}


def test_reformatted_lock_gives_the_same_image(tmp_path: Path, write_project) -> None:  # type: ignore[no-untyped-def]
    """A comment or blank lines in envlock.lock keep its lock-hash, so they must keep its image ID too."""
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "beta"])
    written = spec.lock_path.read_text(encoding="utf-8")
    reformatted = "# reviewed by someone\n\n" + written.replace("\n[", "\n\n# a note\n[") + "\n\n"
    cache, layers, _, _ = stores(tmp_path / "cache", served)

    def config_digest(text: str) -> str:
        lock = lockfile.loads(text)
        plan = plan_image(lock, spec.name, "linux/amd64")
        cache.ensure(plan.wheels)
        made = make_layers(plan, cache, layers, lambda _: None)
        return hashlib.sha256(image_config(plan, ["sha256:" + "b" * 64], {}, made)).hexdigest()

    assert lockfile.loads(reformatted).lock_hash == lockfile.loads(written).lock_hash
    assert config_digest(reformatted) == config_digest(written)
    # The embedded text is the canonical one, and for a lock as envlock wrote it that is the file itself.
    assert plan_image(lockfile.loads(reformatted), spec.name, "linux/amd64").lock_text == written


def two_locks(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> tuple[lockfile.Lock, lockfile.Lock, dict[str, bytes]]:
    """A lock with torch (a layer of its own) and alpha (~100 kB: packages-5), and the same plus one light package
    (beta, ~1 kB: packages-7, above alpha's)."""
    padding = {"alpha": 100_000}
    spec, served = project_with_wheels(tmp_path, write_project, ["torch", "alpha"], padding=padding)
    before = lockfile.read(spec.lock_path)
    spec, more = project_with_wheels(tmp_path, write_project, ["torch", "alpha", "beta"], padding=padding)
    return before, lockfile.read(spec.lock_path), {**served, **more}


def test_rebuild_sends_the_engine_only_the_layers_it_lacks(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    before, after, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    kwargs: dict[str, Any] = {"engine": engine, "cache": cache, "layers": layers, "bases": bases}
    first = build_image(before, "demo", "linux/amd64", Builder(**kwargs))
    second = build_image(after, "demo", "linux/amd64", Builder(**kwargs))
    # base, venv, torch, packages, lock: the light package changes only the last two.
    assert engine.sent_layers == [5, 2]
    assert second.built and engine.tags[second.reference] == second.image_id != first.image_id
    assert engine.images[second.image_id].diff_ids[:3] == engine.images[first.image_id].diff_ids[:3]


def test_a_light_change_reads_no_byte_of_the_heavy_wheels(
    tmp_path: Path, write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a light package remakes two small layers: torch's wheel is neither hashed nor required (its files
    are still checked for overlaps, from its listing), and a torch wheel gone from the cache does not matter."""
    before, after, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    kwargs: dict[str, Any] = {"engine": FakeEngine(), "cache": cache, "layers": layers, "bases": bases}
    build_image(before, "demo", "linux/amd64", Builder(**kwargs))
    torch = next(f for p in after.target("linux/amd64").packages if p.name == "torch" for f in p.files)
    hashed: list[str] = []

    def watched(path: Path) -> str:
        hashed.append(path.name)
        return sha256_file(path)

    monkeypatch.setattr("envlock.image.wheels.sha256_file", watched)
    second = build_image(after, "demo", "linux/amd64", Builder(**kwargs))
    assert second.built and hashed and torch.sha256 not in hashed, "the new layer's wheels only"
    cache.path_for(torch.sha256).unlink()  # a cached layer's wheel may be gone: the layer is what counts
    third = build_image(after, "other", "linux/amd64", Builder(**kwargs))
    assert third.image_id == second.image_id


class _HeldBack(FakeFetcher):
    """A slow index: each download waits (up to 10 s) until `go` is set, and says whether it had to time out."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self.go = threading.Event()
        self.timed_out = False

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[Response]:
        self.timed_out |= not self.go.wait(10)
        with super().open(url, offset) as response:
            yield response


def test_a_new_package_downloads_while_the_lock_layer_is_made(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    """The new wheel's download is not waited for before the layers that need none of it (the lock's, with its
    SBOM): the download here starts only once the lock layer is being made, and the build still succeeds."""
    before, after, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    build_image(before, "demo", "linux/amd64", Builder(engine, cache, layers, bases))
    fetcher = _HeldBack(served)
    notes: list[str] = []

    def report(note: str) -> None:
        notes.append(note)
        if note == "making layer lock":
            fetcher.go.set()

    builder = Builder(engine, WheelCache(cache.root, fetcher), layers, bases, report)
    second = build_image(after, "demo", "linux/amd64", builder)
    assert second.built and not fetcher.timed_out
    made = [note for note in notes if note.startswith(("fetching", "making"))]
    beta = next(f.size for p in after.target("linux/amd64").packages if p.name == "beta" for f in p.wheels)
    assert made == ["fetching 1 wheels", "making layer lock", f"making layer packages-{light_group(beta)}"]
    assert engine.tags[second.reference] == second.image_id


def test_a_failed_download_fails_the_build_with_its_own_error(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    before, after, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    build_image(before, "demo", "linux/amd64", Builder(engine, cache, layers, bases))
    beta = next(f for p in after.target("linux/amd64").packages if p.name == "beta" for f in p.files)
    gone = WheelCache(cache.root, FakeFetcher({u: d for u, d in served.items() if u != beta.url}))
    with pytest.raises(DownloadError, match="HTTP 404"):
        build_image(after, "demo", "linux/amd64", Builder(engine, gone, layers, bases))
    assert engine.tags.keys() == {f"demo:{before.short_hash}"}, "no tag for the lock whose wheel is missing"


def test_partial_load_falls_back_to_every_layer_when_the_engine_lacks_one(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    before, after, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    notes: list[str] = []
    kwargs: dict[str, Any] = {
        "engine": engine,
        "cache": cache,
        "layers": layers,
        "bases": bases,
        "report": notes.append,
    }
    first = build_image(before, "demo", "linux/amd64", Builder(**kwargs))
    # The image is removed between the engine's answer and the load: its layers are gone with it.
    engine.phantom_stacks.append(engine.images[first.image_id].diff_ids)
    engine.remove(first.image_id)
    second = build_image(after, "demo", "linux/amd64", Builder(**kwargs))
    # base, venv, torch, packages-5 (alpha), then packages-7 (beta) and the lock: the whole archive is 6 layers.
    assert engine.sent_layers == [5, 2, 6] and engine.loads == 3
    assert engine.tags == {second.reference: second.image_id}
    assert any("sending every layer" in note and "no such file" in note for note in notes)


def test_a_lost_image_is_loaded_whole_and_gets_the_same_id(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    before, _, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    kwargs: dict[str, Any] = {"engine": engine, "cache": cache, "layers": layers, "bases": bases}
    first = build_image(before, "demo", "linux/amd64", Builder(**kwargs))
    engine.remove(first.image_id)
    again = build_image(before, "demo", "linux/amd64", Builder(**kwargs))
    assert again.built and again.image_id == first.image_id and engine.sent_layers == [5, 5]


def test_noop_build_reads_no_wheel(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "torch"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    first = run_build(spec, engine, cache, layers, bases)
    # Every layer is in the store: the wheels are neither hashed nor fetched (gone from cache and index alike).
    shutil.rmtree(cache.root / "sha256")
    served.clear()
    again = run_build(spec, engine, cache, layers, bases)
    assert not again.built and again.image_id == first.image_id
    engine.remove(first.image_id)
    assert run_build(spec, engine, cache, layers, bases).image_id == first.image_id, "and reloads from layers"


def uploaded(lock: lockfile.Lock, name: str, when: datetime) -> lockfile.Lock:
    """The lock with `name`'s wheels uploaded at `when`, and the lock's epoch that follows from it."""

    def package(p: LockedPackage) -> LockedPackage:
        return replace(p, wheels=tuple(replace(w, upload_time=when) for w in p.wheels)) if p.name == name else p

    targets = tuple(replace(t, packages=tuple(package(p) for p in t.packages)) for t in lock.targets)
    return replace(lock, targets=targets, source_date_epoch=lockfile.source_date_epoch(targets))


def test_a_newly_uploaded_light_package_keeps_every_layer_below_it(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    before, after, _ = two_locks(tmp_path, write_project)
    before = uploaded(before, "torch", datetime(2024, 1, 1, tzinfo=UTC))
    after = uploaded(
        uploaded(after, "torch", datetime(2024, 1, 1, tzinfo=UTC)), "beta", datetime(2026, 11, 1, tzinfo=UTC)
    )
    assert after.source_date_epoch > before.source_date_epoch, "the new package moved the lock's epoch"
    old, new = (plan_image(lock, "demo", "linux/amd64").layers for lock in (before, after))
    assert [layer.label for layer in new] == ["venv", "torch", "packages-5", "packages-7", "lock"]
    assert [layer.key for layer in new[:3]] == [layer.key for layer in old[:3]], "venv, torch and alpha's group"
    assert new[1].epoch == int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    assert new[3].label not in {layer.label for layer in old} and new[4].key != old[3].key


@pytest.mark.parametrize("emulation", [True, False])
def test_lock_pins_each_platforms_base_it_can_build(
    tmp_path: Path, write_project: Callable[[str], Path], emulation: bool
) -> None:
    both = '[tool.envlock]\nplatforms = ["linux/amd64", "linux/arm64"]\n'
    project = write_project('[project]\nname = "demo"\ndependencies = ["alpha"]\n' + both)
    builder = FakeBaseBuilder()
    builder.platforms = {"linux/amd64", "linux/arm64"} if emulation else {"linux/amd64"}
    messages: list[str] = []
    outcome = lock_project(
        load_spec(project),
        FakeResolver({"linux/amd64": [], "linux/arm64": []}),
        bases=BaseStore(tmp_path / "bases", builder),
        report=messages.append,
    )
    assert outcome.lock.target("linux/amd64").base is not None
    arm64 = outcome.lock.target("linux/arm64").base
    if emulation:
        assert arm64 is not None and arm64.debian == {"python3": "3.11.2-1+b1"}
        assert any("linux/arm64" in m and "under emulation" in m for m in messages)
    else:
        assert arm64 is None
        assert any("cannot run linux/arm64 programs" in m and "not pinned" in m for m in messages)


class SlowBaseBuilder(FakeBaseBuilder):
    """mmdebstrap taking its time (minutes under qemu): long enough for a second process to arrive meanwhile."""

    def __init__(self, started: threading.Event) -> None:
        super().__init__()
        self.started = started

    def build(self, recipe: Recipe, platform: str, out: Path) -> None:
        self.started.set()
        time.sleep(0.3)
        super().build(recipe, platform, out)


def test_two_builds_of_a_missing_base_at_once_make_it_once(tmp_path: Path) -> None:
    """A second envlock that needs the base while it is being built waits, says so, and takes the first's."""
    started = threading.Event()
    builder = SlowBaseBuilder(started)
    first_store, second_store = BaseStore(tmp_path / "bases", builder), BaseStore(tmp_path / "bases", builder)
    recipe = load_recipe("debian-bookworm")
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(first_store.ensure(recipe, "linux/arm64").diff_id))
    first.start()
    started.wait(5)
    said: list[str] = []
    second = second_store.ensure(recipe, "linux/arm64", report=said.append)
    first.join()
    assert builder.builds == 1 and results == [second.diff_id]
    assert said == ["waiting for another envlock building base debian-bookworm for linux/arm64"]


def test_a_partial_load_that_times_out_is_reported_as_a_timeout_not_retried_whole(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    before, after, served = two_locks(tmp_path, write_project)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    notes: list[str] = []
    kwargs: dict[str, Any] = {
        "engine": engine,
        "cache": cache,
        "layers": layers,
        "bases": bases,
        "report": notes.append,
    }
    build_image(before, "demo", "linux/amd64", Builder(**kwargs))
    assert engine.load_sizes[0] > 0, "the load says how many bytes it sends"
    engine.fail_load = EngineTimeoutError(
        "cannot load the image into Docker: the Docker engine did not answer within 61 s"
    )
    with pytest.raises(EngineTimeoutError, match="did not answer within 61 s"):
        build_image(after, "demo", "linux/amd64", Builder(**kwargs))
    assert engine.loads == 2 and not any("sending every layer" in note for note in notes)


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its (size, mtime in ns, inode): what any write would change."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns, p.lstat().st_ino) for p in sorted(root.rglob("*"))}


def test_a_noop_build_renders_no_sbom_and_writes_nothing_in_the_cache(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "torch"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine = FakeEngine()
    first = run_build(spec, engine, cache, layers, bases)
    before = _tree(tmp_path / "cache")
    plan = plan_image(lockfile.read(spec.lock_path), spec.name, "linux/amd64")
    again = Builder(engine, cache, layers, bases).build(plan)
    assert (again.built, again.image_id) == (False, first.image_id)
    assert "sbom" not in plan.__dict__, "the SBOM is rendered only when the lock layer is made"
    assert _tree(tmp_path / "cache") == before, "a no-op only reads the cache"


def test_the_provenance_of_an_image_is_kept_when_identical_and_rewritten_otherwise(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    image_id = run_build(spec, FakeEngine(), cache, layers, bases).image_id
    lock = lockfile.read(spec.lock_path)
    path, _ = write_image_attestation(tmp_path, plan_image(lock, "demo", "linux/amd64"), image_id, None, None)
    written = path.stat()
    plan = plan_image(lock, "demo", "linux/amd64")
    _, kept = write_image_attestation(tmp_path, plan, image_id, None, None)
    assert "sbom" not in plan.__dict__ and path.stat().st_ino == written.st_ino, "kept, nothing rendered"
    assert open_envelope(kept, None).statement == image_statement(plan, image_id), "and it is what would be written"
    key = generate_key(tmp_path / "keys" / "signer")
    _, signed = write_image_attestation(tmp_path, plan, image_id, None, key)
    assert path.stat().st_ino != written.st_ino and open_envelope(signed, key.public).signed_by == key.public.keyid
    document = json.loads(path.read_text())
    document["payload"] = base64.b64encode(canonical({**image_statement(plan, image_id), "subject": []})).decode()
    path.write_text(json.dumps(document))
    _, rewritten = write_image_attestation(tmp_path, plan, image_id, None, key)
    assert open_envelope(rewritten, key.public).statement == image_statement(plan, image_id), "an edited one is not"
