"""`envlock build`: the lock's image, made deterministically, loaded into the engine, tagged last."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from envlock.engine.archive import sha256_digest, write_archive
from envlock.engine.docker import Engine, LayerHolder
from envlock.errors import BuildError, EngineError, EngineTimeoutError, StaleLockError
from envlock.fsutil import (
    cache_writes,
    no_space_is_an_error,
    owned_prefix,
    require_writable,
    shared_scratch,
    sweep_stale,
)
from envlock.image import bases as base_mod
from envlock.image.catalog import record_image
from envlock.image.layers import Layer, LayerStore
from envlock.image.plan import (
    ImagePlan,
    image_config,
    layer_key,
    make_layers,
    plan_image,
    wheels_to_make,
)
from envlock.image.registry import Blob, PlatformManifest, Registry, manifest_for, push, split_target
from envlock.image.staging import VenvLayout
from envlock.image.wheels import WheelCache
from envlock.lock import recipes
from envlock.lock.lockfile import Lock, TargetBase
from envlock.lock.targets import ARCHITECTURES
from envlock.report import Progress, Report, no_progress, silent


@dataclass(frozen=True)
class BuildOutcome:
    """The image a build produced or found."""

    reference: str
    image_id: str
    built: bool
    base_diff_id: str


@dataclass(frozen=True)
class Assembled:
    """Everything an image is made of: its config and its layer tarballs (base first)."""

    config: bytes
    parts: list[tuple[str, Path]]  # (diff_id, tar)
    base_diff_id: str

    @property
    def image_id(self) -> str:
        """The sha256 of the config: what any engine will call this image."""
        return sha256_digest(self.config)


@dataclass
class Builder:
    """`envlock build` and `--push`, with their collaborators passed in."""

    engine: Engine
    cache: WheelCache
    layers: LayerStore
    bases: base_mod.BaseStore
    report: Report = silent
    progress: Progress = no_progress

    def assemble(self, plan: ImagePlan, scratch: Path, fresh: bool = False) -> Assembled:
        """The base, the verified wheels and every layer (reused by content key unless fresh)."""
        lock = plan.lock
        if recipes.is_image_reference(lock.base.name):
            upstream = base_mod.export_upstream(lock.base.name, self.engine, self.layers, scratch)
            check_upstream(upstream, plan, lock.target(plan.platform).base)
            base_parts, base_env = upstream.layers, upstream.env
            home = upstream.python_homes[lock.python]
            store = LayerStore(scratch / "layers") if fresh else self.layers
            made = self.make(plan, store, VenvLayout(lock.python, home))
            config = image_config(plan, [d for d, _ in base_parts], base_env, made)
            return Assembled(config, [*base_parts, *((m.diff_id, m.tar) for m in made)], lock.base.name)
        recipe = recipes.load_recipe(lock.base.name)
        if recipe.sha256 != lock.base.sha256:
            raise StaleLockError(
                f"base recipe {recipe.name} changed since the lock was made",
                hint="run `envlock lock` to lock against the current recipe",
            )
        self.report(f"base {recipe.name} for {plan.platform}")
        built_base = self.bases.ensure(recipe.including(lock.system_packages), plan.platform, report=self.report)
        pinned = lock.target(plan.platform).base
        if pinned is None:
            self.report(f"the lock does not pin the base's bytes for {plan.platform}; using {built_base.diff_id[:19]}")
        elif pinned.id != built_base.diff_id:
            moved = [
                f"{name} {pinned.debian.get(name, 'absent')} -> {version}"
                for name, version in built_base.packages.items()
                if pinned.debian.get(name) != version
            ]
            changes = ", ".join(moved[:3]) or "same packages, other bytes"
            raise BuildError(
                f"the {recipe.name} base on this machine ({built_base.diff_id[:19]}) is not the lock's "
                f"({pinned.id[:19]}): the Debian mirror moved ({changes})",
                hint=f"build where the lock's base is, or adopt today's: envlock base build {recipe.name} --rebuild "
                "&& envlock lock --upgrade",
            )
        # fresh (--no-cache): every layer made anew into this build's scratch store; wheels are still verified.
        store = LayerStore(scratch / "layers") if fresh else self.layers
        made = self.make(plan, store, VenvLayout(lock.python))
        config = image_config(plan, [built_base.diff_id], {}, made)
        parts = [(built_base.diff_id, built_base.tar), *((m.diff_id, m.tar) for m in made)]
        return Assembled(config, parts, built_base.diff_id)

    def assembled_from_cache(self, plan: ImagePlan) -> Assembled | None:
        """The image as the cache already holds it, writing nothing (a user who may only read a shared cache runs
        images built by others): None when any part (base, layer, upstream export) must first be made."""
        lock = plan.lock
        layout = VenvLayout(lock.python)
        if recipes.is_image_reference(lock.base.name):
            upstream = base_mod.cached_upstream(lock.base.name, self.engine, self.layers)
            if upstream is None or lock.python not in upstream.python_homes:
                return None
            pinned_base = lock.target(plan.platform).base
            if upstream.architecture != ARCHITECTURES[plan.platform] or (
                pinned_base is not None and pinned_base.id != upstream.image_id
            ):
                return None
            layout = VenvLayout(lock.python, upstream.python_homes[lock.python])
            base_parts, base_env, base_diff_id = upstream.layers, upstream.env, lock.base.name
        else:
            recipe = recipes.load_recipe(lock.base.name)
            built_base = self.bases.get(recipe.including(lock.system_packages), plan.platform)
            pinned = lock.target(plan.platform).base
            if recipe.sha256 != lock.base.sha256 or built_base is None:
                return None
            if pinned is not None and pinned.id != built_base.diff_id:
                return None
            base_parts, base_env, base_diff_id = [(built_base.diff_id, built_base.tar)], {}, built_base.diff_id
        made = [self.layers.get(layer_key(spec, layout)) for spec in plan.layers]
        layers = [layer for layer in made if layer is not None]
        if len(layers) != len(made):
            return None
        config = image_config(plan, [d for d, _ in base_parts], base_env, layers)
        return Assembled(config, [*base_parts, *((m.diff_id, m.tar) for m in layers)], base_diff_id)

    def make(self, plan: ImagePlan, store: LayerStore, layout: VenvLayout) -> list[Layer]:
        """The plan's layers, made or found in `store`. The wheels of the layers to make are downloaded and verified
        in the background while the layers that need none (the lock's) are made; a cached layer's wheels are not
        read at all."""
        wheels = wheels_to_make(plan, store, layout)
        if not wheels:
            return make_layers(plan, self.cache, store, self.report, layout)
        self.report(f"fetching {len(wheels)} wheels")
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415  (a no-op build fetches nothing)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="envlock-fetch") as pool:
            fetching = pool.submit(self.cache.ensure, wheels, self.progress)
            return make_layers(plan, self.cache, store, self.report, layout, fetched=fetching.result)

    def sweep(self) -> None:
        """Scratch left by a build that was killed (kill -9 skips every cleanup) goes at the next build."""
        swept = (
            (self.layers.root, ".making-"),
            (self.bases.root, ".building-"),
            (self.scratch, "image-"),
            (self.scratch, "push-"),
            (self.scratch, ""),  # anything else there: by age only
            # Scratch of envlock before per-user scratch folders (tmp/<uid>) were made.
            (self.scratch.parent, "image-"),
            (self.scratch.parent, "push-"),
        )
        for root, prefix in swept:
            for removed in sweep_stale(root, prefix):
                self.report(f"removed stale scratch {removed}")

    @property
    def scratch(self) -> Path:
        """Where builds assemble archives: beside the caches, not in a small /tmp; one folder per user."""
        return self.layers.root.parent / "tmp" / str(os.getuid())

    @property
    def cache_root(self) -> Path:
        """The cache folder the build writes into (layers, bases, wheels, scratch are beside each other there)."""
        return self.layers.root.parent

    def build(self, plan: ImagePlan, no_cache: bool = False) -> BuildOutcome:
        """Build the plan's image, or find it already built from this lock."""
        tagged = None if no_cache else self.engine.image_id(plan.reference)
        if tagged is not None:
            # The tagged image is checked by content first from what the cache holds, reading only: running an
            # image built by another user of a shared cache needs no write access to it.
            known = self.assembled_from_cache(plan)
            if known is not None and known.image_id == tagged:
                return BuildOutcome(plan.reference, tagged, False, known.base_diff_id)
        require_writable((self.cache_root, self.layers.root, self.bases.root, self.cache.root, self.scratch.parent))
        with cache_writes(f"building {plan.reference}", self.cache_root):
            self.sweep()
            return self._build(plan, tagged, no_cache)

    def _build(self, plan: ImagePlan, tagged: str | None, no_cache: bool) -> BuildOutcome:
        places = (self.scratch, self.layers.root, self.bases.root, Path(tempfile.gettempdir()))
        with no_space_is_an_error(f"building {plan.reference}", places):
            shared_scratch(self.scratch)
            with tempfile.TemporaryDirectory(prefix=owned_prefix("image-"), dir=self.scratch) as tmp:
                # The plan's image ID is the digest of its config, known once the layers are (cached layers are
                # only verified, not made): the tag is trusted only when it names exactly that image, never by
                # its labels, which a `docker commit` or a relabelled image carries just as well.
                assembled = self.assemble(plan, Path(tmp), fresh=no_cache)
                if tagged == assembled.image_id:
                    return BuildOutcome(plan.reference, tagged, False, assembled.base_diff_id)
                if tagged is not None:
                    self.report(
                        f"{plan.reference} names image {tagged[:19]}, not this lock's {assembled.image_id[:19]}: "
                        "rebuilding and re-tagging"
                    )
                loaded = self.load(assembled, plan.reference)
        if loaded != assembled.image_id:
            raise EngineError(
                f"the engine computed image ID {loaded}, not {assembled.image_id}",
                hint="the engine rewrote the image; please report this with `docker version`",
            )
        # Tag last: a lock-hash tag only ever names a complete, verified image.
        self.engine.tag(loaded, plan.repository, plan.tag)
        return BuildOutcome(plan.reference, loaded, True, assembled.base_diff_id)

    def load(self, assembled: Assembled, reference: str) -> str:
        """Send the engine the layers it lacks (all of them when it cannot say); returns the loaded image's ID."""
        diff_ids = [diff_id for diff_id, _ in assembled.parts]
        held = self.engine.held_layers(diff_ids) if isinstance(self.engine, LayerHolder) else 0
        if held:
            self.report(f"loading {reference} into the engine ({len(diff_ids) - held} of {len(diff_ids)} layers)")
            try:
                return self.engine.load(
                    lambda sink: write_archive(sink, assembled.config, assembled.parts, held),
                    _size(assembled.parts[held:]),
                )
            except EngineTimeoutError:
                raise  # the engine did not say no: sending more would only wait longer
            except EngineError as exc:
                # An image removed between the question and the load takes its layers with it: send them all.
                self.report(f"the engine refused the partial archive ({exc.message}); sending every layer")
        else:
            self.report(f"loading {reference} into the engine")
        return self.engine.load(
            lambda sink: write_archive(sink, assembled.config, assembled.parts), _size(assembled.parts)
        )

    def push(self, plan: ImagePlan, registry: Registry, target: str) -> str:
        """Push the plan's own blobs (uncompressed layers) and manifest; returns `repo@sha256:…`."""
        return self.push_platform(plan, registry, target)[0]

    def push_platform(self, plan: ImagePlan, registry: Registry, target: str) -> tuple[str, PlatformManifest]:
        """`push`, also returning the manifest's entry for an image index."""
        _, namespace = split_target(target)
        repository = f"{namespace}/{plan.repository}" if namespace else plan.repository
        shared_scratch(self.scratch)
        with tempfile.TemporaryDirectory(prefix=owned_prefix("push-"), dir=self.scratch) as tmp:
            assembled = self.assemble(plan, Path(tmp))
            self.report(f"pushing {len(assembled.parts)} layers to {target}")
            blobs = [Blob(diff_id, tar.stat().st_size, path=tar) for diff_id, tar in assembled.parts]
            pushed = push(registry, repository, plan.tag, assembled.config, blobs)
            manifest = manifest_for(assembled.config, blobs)
        entry = PlatformManifest(plan.platform, pushed.rsplit("@", 1)[1], len(manifest))
        return f"{target.split('/', maxsplit=1)[0]}/{pushed}", entry


def check_upstream(upstream: base_mod.UpstreamBase, plan: ImagePlan, pinned: TargetBase | None) -> None:
    """The upstream base is for this platform, ships the lock's Python, and is the image the lock pinned."""
    if upstream.architecture != ARCHITECTURES[plan.platform]:
        raise BuildError(
            f"base {upstream.ref} is a {upstream.architecture} image, not {plan.platform}",
            hint="pin the digest of the image for this platform (a manifest list's entry)",
        )
    if plan.lock.python not in upstream.python_homes:
        shipped = ", ".join(sorted(upstream.python_homes)) or "none"
        raise BuildError(
            f"base {upstream.ref} has no python{plan.lock.python} in /usr/local/bin or /usr/bin (it has: {shipped})",
            hint='set python = "X.Y" in [tool.envlock] to a Python the base ships',
        )
    if pinned is not None and pinned.id != upstream.image_id:
        raise BuildError(
            f"base {upstream.ref} is image {upstream.image_id[:19]} here, but the lock pinned {pinned.id[:19]}",
            hint="the engine rewrote the image; pull it again by digest, or re-lock",
        )


def load_base(built: base_mod.BuiltBase, engine: Engine) -> str:
    """Load a built base into the engine as an image of its own (for `FROM` in other builds); returns its name."""
    created = datetime.fromtimestamp(built.recipe.source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "architecture": built.platform.split("/")[1],
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["bash"],
            "Labels": {"dev.envlock.base": built.diff_id, "dev.envlock.recipe-sha256": built.recipe.sha256},
        },
        "rootfs": {"type": "layers", "diff_ids": [built.diff_id]},
        "history": [{"created": created, "created_by": f"envlock base {built.recipe.name}"}],
    }
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    expected = sha256_digest(blob)
    loaded = engine.load(lambda sink: write_archive(sink, blob, [(built.diff_id, built.tar)]), built.tar.stat().st_size)
    if loaded != expected:
        raise EngineError(f"the engine computed image ID {loaded} for the base, not {expected}")
    repository, tag = f"envlock-base/{built.recipe.name}", built.diff_id.removeprefix("sha256:")[:12]
    engine.tag(loaded, repository, tag)
    return f"{repository}:{tag}"


class ImageEvidence(Protocol):
    """The provenance writer the build core is handed (the composition root builds the real one): every image a
    command builds or finds for a project gets its provenance there, whichever command asked for it."""

    def image_built(self, project_dir: Path, plan: ImagePlan, image_id: str, pushed: str | None) -> None:
        """Write the provenance of `plan`'s image, built as `image_id` (and pushed as `pushed`)."""


def build_and_push(
    lock: Lock,
    repository: str,
    platform: str,
    *,
    builder: Builder,
    project_dir: Path,
    evidence: ImageEvidence,
    no_cache: bool = False,
    push_to: tuple[Registry, str] | None = None,
) -> tuple[BuildOutcome, str | None]:
    """`envlock build [--push]`: build (or find) the image, push it when asked, remember both in images.json, and
    write its provenance."""
    plan = plan_image(lock, repository, platform)
    outcome = builder.build(plan, no_cache=no_cache)
    pushed = builder.push(plan, *push_to) if push_to else None
    record_image(
        project_dir, lock.lock_hash, outcome.image_id, outcome.reference, outcome.base_diff_id,
        pushed=pushed, platform=platform,
    )  # fmt: skip
    evidence.image_built(project_dir, plan, outcome.image_id, pushed)
    return outcome, pushed


def build_image(
    lock: Lock, repository: str, platform: str, builder: Builder, *, no_cache: bool = False
) -> BuildOutcome:
    """Build the image of `lock` for `platform` with `builder` (its engine, caches and reporting), or find it
    already built."""
    return builder.build(plan_image(lock, repository, platform), no_cache=no_cache)


def _size(parts: list[tuple[str, Path]]) -> int:
    """About what a load of these layer tars sends (the engine's wait is sized by it)."""
    return sum(tar.stat().st_size for _, tar in parts)
