"""The run service: a lock's image found or built, a recorded run's restored by ID, archived — and runs in them
(`envlock run`, a submitted job's task on its node, reproduce), each handed to the run core as a RunContext."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from envlock.engine.docker import Engine
from envlock.engine.launch import Launcher
from envlock.engine.runtimes import LOCK_HASH_LABEL, OwnImages, StreamSink
from envlock.errors import EngineError, EngineUnreachableError, RestoreError, UsageError
from envlock.git import GIT_OF, Git, Origin, own_git
from envlock.image.catalog import (
    Built,
    PinnedImage,
    image_for_lock,
    platform_tag,
    read_images,
    recorded_for_platform,
)
from envlock.lock import lockfile
from envlock.lock.backend import MetadataSource, default_backend
from envlock.lock.lockfile import Lock
from envlock.lock.spec import UNTRACKED_MAX_BYTES, Spec
from envlock.lock.targets import host_platform
from envlock.paths import LOCK_FILE, ProjectLayout
from envlock.report import Report
from envlock.run.arguments import ImageRef, LockRef, RunRef
from envlock.run.gitstate import GitState, git_state, save_untracked
from envlock.run.hostprobe import HostState
from envlock.run.inputs import links_out_of
from envlock.run.objects import ObjectStore
from envlock.run.ownversion import current_versions, metadata_folder
from envlock.run.records import RunRecord, RunStore
from envlock.run.runner import (
    LockedImage,
    OwnMetadata,
    RunContext,
    RunEvidence,
    RunFolders,
    RunRequest,
    run_in_image,
)
from envlock.run.tracking import Tracking

if TYPE_CHECKING:
    from envlock.image.build import Builder, ImageEvidence
    from envlock.image.plan import ImagePlan
    from envlock.image.restore import Restored


class Evidence(RunEvidence, Protocol):
    """The one evidence writer the composition root hands the core: run attestations and (as image.build's
    ImageEvidence, whose module loads only when building) image provenance."""

    def image_built(self, project_dir: Path, plan: ImagePlan, image_id: str, pushed: str | None) -> None:
        """Write the provenance of `plan`'s image, built as `image_id` (and pushed as `pushed`)."""


_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")  # what images.json may name; anything else is never handed on
# The repository name a rebuild of a foreign lock gets (a bundle's own image name is never given to the engine).
FOREIGN_REPOSITORY = "envlock-reproduction"


@dataclass(frozen=True)
class RunTools:
    """The outside systems a run touches, handed in by the composition root (fakes in tests)."""

    engine: Engine
    launcher: Callable[[], Launcher]
    probe: Callable[[], HostState]
    builder: Callable[[Sequence[str]], Builder]  # index URLs → a Builder over the user's caches
    output: StreamSink
    report: Report
    evidence: Evidence  # attests every run that ends and every image built on the way
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)  # the host variables a run may pass
    # The project's build backend: asked for the version of the commit that runs (own packages versioned by VCS).
    backend: Callable[[], MetadataSource] = default_backend


def own_metadata(lock: Lock, versions: Mapping[str, str], project_dir: Path) -> OwnMetadata | None:
    """The versions and mounted dist-info of the lock's own packages versioned by VCS (None: it has none)."""
    folder = metadata_folder(lock, versions, ProjectLayout(project_dir).local_metadata)
    return OwnMetadata(dict(versions), folder) if folder else None


def code_state(
    project_dir: Path, request: RunRequest, store: RunStore, max_bytes: int, report: Report, *, git: Git = own_git
) -> GitState:
    """The code as the run sees it: commit, diff, and the untracked files copied into `.envlock/objects/` (up to
    `max_bytes`); each file left without a copy is reported (a reproduction cannot bring it back)."""
    state = git_state(project_dir, (*request.outputs, *request.inputs), git)
    state = save_untracked(state, project_dir, ObjectStore(ProjectLayout(store.project_dir).objects), max_bytes)
    for name, why in state.skipped.items():
        report(f"warning: untracked {name} not saved with the run ({why}): a reproduction cannot restore it")
    return state


def build_lock_image(
    lock: Lock, repository: str, platform: str, builder: Builder, *, project_dir: Path, evidence: ImageEvidence
) -> Built:
    """Build (or find) a lock's image, with its provenance in the project: the one path `run`, `submit`, the
    exports and restore's rebuild share."""
    from envlock.image.plan import plan_image  # noqa: PLC0415  (the build machinery only when building)

    plan = plan_image(lock, repository, platform)
    outcome = builder.build(plan)
    evidence.image_built(project_dir, plan, outcome.image_id, None)
    return Built(outcome.image_id, outcome.reference, outcome.base_diff_id)


def lock_image(
    lock: Lock,
    repository: str,
    *,
    project_dir: Path,
    index_urls: Sequence[str],
    tools: RunTools,
    own_store: OwnImages | None = None,
) -> PinnedImage:
    """The lock's image for this host, by ID: the engine's, or built now when missing. Under a runtime with a store
    of its own (`own_store`), a node whose Docker engine cannot be reached runs the image this project recorded for
    the lock, from that store or pulled by its registry digest (most HPC nodes have no Docker)."""
    platform = host_platform()
    reference = f"{repository}:{platform_tag(lock.short_hash, platform)}"
    try:
        return image_for_lock(
            lock.lock_hash,
            reference,
            engine=tools.engine,
            project_dir=project_dir,
            build=lambda: build_lock_image(
                lock, repository, platform, tools.builder(index_urls), project_dir=project_dir, evidence=tools.evidence
            ),
        )
    except EngineUnreachableError as unreachable:
        if own_store is None:
            raise
        return _recorded_image(lock, reference, own_store, project_dir, unreachable, tools.report)


def _recorded_image(
    lock: Lock, reference: str, own_store: OwnImages, project_dir: Path, unreachable: EngineError, report: Report
) -> PinnedImage:
    """The image .envlock/images.json records for the lock, brought into the runtime's store without the engine
    (the store or the registry check it by ID); one RestoreError line when nothing can bring it."""
    from envlock.image.restore import restore_for_runtime  # noqa: PLC0415

    platform = host_platform()
    image_id, pushed = recorded_for_platform(project_dir, lock.lock_hash, platform)
    if image_id is None or not _IMAGE_ID.fullmatch(image_id):
        raise RestoreError(
            f"no image of lock {lock.short_hash} for {platform} is recorded in this project, and there is no Docker "
            f"engine to build it ({unreachable.message})",
            hint="build and push it where Docker runs (envlock build --push), then run here; or run where Docker is",
        )

    def no_engine() -> Restored:
        raise unreachable

    restored = restore_for_runtime(
        image_id, runtime=own_store, repo_digests=pushed, through_engine=no_engine, report=report
    )
    # images.json is the project's own file: the image it names must be this lock's (the engine's path checks the
    # tag against a build; here the runtime's copy says which lock it was built from).
    built_from = own_store.labels(image_id).get(LOCK_HASH_LABEL)
    if built_from != lock.lock_hash:
        raise RestoreError(
            f"image {image_id[:19]}, recorded for lock {lock.short_hash} in .envlock/images.json, was built from "
            + (f"lock {built_from[:12]}" if built_from else "no envlock lock")
            + ": refusing to run it",
            hint="the record was edited or copied from another project: rebuild and push the image where Docker "
            "runs (envlock build --push), then run here",
        )
    report(f"image {image_id[:19]} from {restored.source} (the Docker engine is not reachable)")
    return PinnedImage(image_id, reference, pushed)


def rebuild_from(lock_path: Path, repository: str, tools: RunTools, project_dir: Path) -> Callable[[], str]:
    """A rebuild from a lock copy, for restore's last resort (accepted only if it gives the recorded ID); its
    provenance goes into `project_dir`."""

    def rebuild() -> str:
        lock = lockfile.read(lock_path)
        builder = tools.builder(())
        return build_lock_image(
            lock, repository, host_platform(), builder, project_dir=project_dir, evidence=tools.evidence
        ).image_id

    return rebuild


@dataclass(frozen=True, kw_only=True)
class RecordedRun:
    """A recorded run to run (again) in its image: its record and lock copy, the folders of the new run (a node's
    project, a reproduction's worktree), where the record came from, and archives that may hold its image."""

    record: RunRecord
    lock_path: Path
    folders: RunFolders
    origin: Origin = "own"
    archives: tuple[Path, ...] = ()
    # Whether the registries the record names may be asked for its image: a foreign record's only with the user's
    # word (`reproduce --pull`), or a bundle's sender would choose where the receiver's engine connects.
    pull: bool = True


def run_recorded(
    recorded: RecordedRun,
    request: RunRequest,
    tools: RunTools,
    *,
    queued: RunRecord | None = None,
    tracking: Tracking | None = None,
) -> RunRecord:
    """Run a recorded run's image (restored by ID: engine, registry by digest, archive, rebuild; a runtime with a
    store of its own gets a pushed image from the registry itself, without the engine) on this host, in
    `recorded.folders` (a reproduction: code in a worktree, inputs from the project).

    A foreign record (from a bundle) names nothing the receiver's engine keeps: its image is used by ID, never
    tagged with the record's name, and a rebuild is named FOREIGN_REPOSITORY; its git runs with hooks off."""
    record, origin, folders = recorded.record, recorded.origin, recorded.folders
    store = folders.store
    restored = _restored(recorded, tools)
    tools.report(f"image {restored.image_id[:19]} from {restored.source}")
    lock = lockfile.read(recorded.lock_path)
    versions = record.package_versions
    if queued is not None and origin == "own":  # a batch job: the commit the node runs (its git is taken there too)
        versions = current_versions(lock.local_packages, folders.code, tools.backend())
    context = RunContext(
        locked=LockedImage(
            lock,
            lockfile.read_text(recorded.lock_path),
            record.platform,
            PinnedImage(record.image_id, record.image_reference, tuple(record.repo_digests)),
        ),
        host=tools.probe(),
        git=code_state(folders.code, request, store, UNTRACKED_MAX_BYTES, tools.report, git=GIT_OF[origin]),
        folders=folders,
        environ=tools.environ,
        # The recorded versions, never the backend on this code: the same version, and nothing of a foreign
        # project's runs on this host.
        own=own_metadata(lock, versions, store.project_dir),
    )
    return run_in_image(
        context,
        request,
        launcher=restored.launcher,
        output=tools.output,
        evidence=tools.evidence,
        queued=queued,
        tracking=tracking,
    )


@dataclass(frozen=True)
class _Found:
    """A recorded run's image, back on this host, and the launcher that runs it."""

    image_id: str
    source: str
    launcher: Launcher


def _restored(recorded: RecordedRun, tools: RunTools) -> _Found:
    """The recorded run's image restored by ID for the launcher that will run it (through the engine, or by a
    runtime with a store of its own from the registry)."""
    from envlock.image.restore import restore_for_runtime, restore_image  # noqa: PLC0415

    record, origin, project_dir = recorded.record, recorded.origin, recorded.folders.store.project_dir
    repository = FOREIGN_REPOSITORY if origin == "foreign" else record.image_reference.split(":")[0]
    # Without the user's word a foreign record sends nothing to the network: no pull from the registries it names,
    # no rebuild from its lock (which would pull the base the lock names and download the wheels from its URLs).
    digests = tuple(record.repo_digests) if recorded.pull else ()
    rebuild = rebuild_from(recorded.lock_path, repository, tools, project_dir) if recorded.pull else None
    if record.repo_digests and not recorded.pull:
        tools.report(f"not pulling {', '.join(record.repo_digests)}: a bundle's registries are asked only with --pull")

    def through_engine() -> Restored:
        try:
            return restore_image(
                record.image_id,
                engine=tools.engine,
                repo_digests=digests,
                archives=(*recorded.archives, ProjectLayout(project_dir).archive_for(record.image_id)),
                rebuild=rebuild,
                reference=None if origin == "foreign" else record.image_reference,
                report=tools.report,
            )
        except RestoreError as exc:
            if recorded.pull:
                raise
            where = ", ".join(record.repo_digests) or "no registry"
            raise RestoreError(
                f"{exc.message}; the record names {where}: a bundle's run is fetched or rebuilt only with --pull",
                hint="reproduce it again with --pull (the image by digest from those registries, else a rebuild "
                "from its lock, which downloads its base and wheels), or ask for a bundle with its image "
                "(bundle --with-image)",
            ) from exc

    launcher = tools.launcher()
    if isinstance(launcher, OwnImages):  # Podman, Charliecloud: from the registry themselves, no engine asked
        restored = restore_for_runtime(
            record.image_id,
            runtime=launcher,
            repo_digests=digests,
            through_engine=through_engine,
            report=tools.report,
        )
    else:
        restored = through_engine()
    return _Found(restored.image_id, restored.source, launcher)


@dataclass(frozen=True)
class RestoreTarget:
    """What `envlock restore` was pointed at, resolved to the image it wants back and the ways to get it."""

    image_id: str | None  # None: nothing was recorded for this lock, only a rebuild can bring it
    reference: str
    repo_digests: tuple[str, ...]
    rebuild: Callable[[], str]


def restore_target(target: LockRef | RunRef, project_dir: Path, tools: RunTools) -> RestoreTarget:
    """A run of the project or a lock file → the image to restore (a registry digest is pulled directly)."""
    if isinstance(target, LockRef):
        lock = lockfile.read(target.path)
        known = read_images(project_dir).get(lock.lock_hash, {})
        reference = str(known.get("reference") or f"envlock-restored:{lock.short_hash}")
        image_id = known.get("image-id")
        return RestoreTarget(
            str(image_id) if image_id else None,
            reference,
            tuple(known.get("pushed", [])),
            rebuild_from(target.path, reference.split(":", maxsplit=1)[0], tools, project_dir),
        )
    store, record = RunStore(project_dir), target.record
    return RestoreTarget(
        record.image_id,
        record.image_reference,
        tuple(record.repo_digests),
        rebuild_from(
            store.directory(record.run_id) / LOCK_FILE, record.image_reference.split(":")[0], tools, project_dir
        ),
    )


def archive_source(target: RunRef | ImageRef, engine: Engine) -> str:
    """The local image ID `envlock archive` writes: a run's image, or an image by name or ID."""
    image_id = target.record.image_id if isinstance(target, RunRef) else target.image_id
    if not image_id or engine.image_id(image_id) is None:
        raise UsageError(f"the image of run {target.text!r} is not here", hint=f"envlock restore {target.text} first")
    return image_id


def run_project(
    spec: Spec,
    lock: Lock,
    request: RunRequest,
    tools: RunTools,
    *,
    tracking: Tracking | None,
    remove_container: Callable[[str], None],
) -> tuple[RunRecord, RunStore]:
    """`envlock run`: the lock's image (built when missing), orphaned runs closed, then the run in it."""
    lock_text = lockfile.read_text(spec.lock_path)
    launcher = tools.launcher()
    image = lock_image(
        lock,
        spec.name,
        project_dir=spec.project_dir,
        index_urls=[spec.index_url, *spec.extra_index_urls],
        tools=tools,
        own_store=launcher if isinstance(launcher, OwnImages) else None,
    )
    store = RunStore(spec.project_dir)
    for orphan in store.settle_orphans(remove_container):
        tools.report(f"run {orphan.run_id} had lost its envlock (killed): marked interrupted, container removed")
        tools.evidence.run_ended(store.directory(orphan.run_id))
    for name, target in links_out_of(spec.project_dir, request.inputs):
        tools.report(
            f"warning: {name} -> {target} leads outside the project, which is all the container sees: there it "
            f"dangles (declare it, --input {name} or inputs = [...], to mount it read-only and hash it into the record)"
        )
    versions = current_versions(spec.local_packages, spec.project_dir, tools.backend())
    locked = LockedImage(lock, lock_text, host_platform(), image)
    host = tools.probe()
    git = code_state(spec.project_dir, request, store, spec.untracked_max_bytes, tools.report)
    context = RunContext(
        locked=locked,
        host=host,
        git=git,
        folders=RunFolders(spec.project_dir, store),
        environ=tools.environ,
        own=own_metadata(lock, versions, spec.project_dir),
    )
    record = run_in_image(
        context,
        request,
        launcher=launcher,
        output=tools.output,
        evidence=tools.evidence,
        tracking=tracking,
    )
    return record, store
