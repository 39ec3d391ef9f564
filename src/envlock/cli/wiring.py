"""The one composition root: the real adapters, built once and lazily; tests hand in fakes instead.

Nothing here is a choice made during an invocation: what depends on the parsed options (the runtime above all) is
an argument of the method that builds it (`launcher(runtime)`, `run_tools(runtime)`), so the order in which
commands ask for collaborators cannot change what they get. The invocation's own values (`envlock submit`'s
sbatch options and command) travel beside the root, in `Invocation`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from envlock.paths import CacheLayout, cache_root
from envlock.report import Progress, no_progress, shown_lines

if TYPE_CHECKING:
    from envlock.cluster.slurm import Slurm
    from envlock.engine.docker import Engine
    from envlock.engine.launch import Launcher
    from envlock.image.bases import BaseStore, UpstreamBase
    from envlock.image.build import Builder
    from envlock.image.plan import ImagePlan
    from envlock.image.registry import Registry
    from envlock.lock.resolve import Resolver
    from envlock.run.hostprobe import HostState, Nvml
    from envlock.run.service import RunTools
    from envlock.run.tracking import Tracker
    from envlock.signing import SigningKey


# `ENVLOCK_PRECOMPILE=0`: no background compile of a new image's bytecode (runs compile what they import, as
# before). For machines where a detached container after a build is unwelcome, and for test suites that remove
# images right after building them.
PRECOMPILE_ENV = "ENVLOCK_PRECOMPILE"


def say(message: str) -> None:
    """Progress and notes: dim, on stderr (stdout stays for results)."""
    typer.secho(shown_lines(message), err=True, dim=True)


def write_through(stream: str, data: bytes) -> None:
    """A container's output, passed through as it comes."""
    target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    target.write(data)
    target.flush()


@dataclass
class Wiring:
    """Builds each outside system once, on first use. Every field left None is the real adapter."""

    engine_: Engine | None = None
    launcher_: Launcher | None = None  # one launcher for every runtime (tests)
    launcher_for: Callable[[str], Launcher] | None = None  # a launcher per runtime (tests)
    nvml_: Nvml | None = None
    slurm_: Slurm | None = None
    bases_: BaseStore | None = None
    resolvers: Mapping[str, Resolver] | None = None
    builder_for: Callable[[Sequence[str], Progress], Builder] | None = None
    tracker_for: Callable[[str], Tracker] | None = None
    registry_for: Callable[[str], Registry] | None = None
    upstream_for: Callable[[str], UpstreamBase] | None = None
    docker_version: Callable[[], str | None] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    say: Callable[[str], None] = say
    write: Callable[[str, bytes], None] = write_through
    cache_dir: Path | None = None
    # Memos of what the outside world answered, never of a choice: the same question gets the same answer.
    _launchers: dict[str, Launcher] = field(default_factory=dict, repr=False)  # built once per runtime
    _engine_versions: list[str | None] = field(default_factory=list, repr=False)  # asked once per invocation

    @property
    def cache(self) -> CacheLayout:
        """The user's cache (wheels, layers, bases, scratch)."""
        return CacheLayout(self.cache_dir or cache_root())

    @property
    def engine(self) -> Engine:
        """The container engine (Docker through docker-py)."""
        if self.engine_ is None:
            from envlock.engine.docker import DockerEngine  # noqa: PLC0415  (start-up time: only when used)

            self.engine_ = DockerEngine()
        return self.engine_

    def launcher(self, runtime: str) -> Launcher:
        """What starts containers for runs under `runtime` (built once per runtime). Podman and Charliecloud get a
        pushed image from the registry by digest themselves (no Docker engine on the node), one never pushed from a
        verified export of the engine's copy, once."""
        if self.launcher_ is not None:
            return self.launcher_
        if runtime not in self._launchers:
            self._launchers[runtime] = (
                self.launcher_for(runtime) if self.launcher_for is not None else self._real_launcher(runtime)
            )
        return self._launchers[runtime]

    def _real_launcher(self, runtime: str) -> Launcher:
        if runtime == "podman":
            from envlock.engine.docker import save_file  # noqa: PLC0415
            from envlock.engine.podman import PodmanLauncher  # noqa: PLC0415
            from envlock.image.registry import insecure_registries  # noqa: PLC0415

            return PodmanLauncher(
                partial(save_file, self.engine), self.cache.scratch, insecure=insecure_registries(self.environ)
            )
        if runtime == "charliecloud":
            from envlock.engine.charliecloud import CharliecloudLauncher  # noqa: PLC0415
            from envlock.engine.docker import save_file  # noqa: PLC0415
            from envlock.image.registry import fetch_pushed  # noqa: PLC0415

            return CharliecloudLauncher(
                self.cache.charliecloud, partial(save_file, self.engine), fetch=partial(fetch_pushed, self.registry)
            )
        from envlock.engine.docker import DockerEngine  # noqa: PLC0415
        from envlock.engine.launch import DockerLauncher  # noqa: PLC0415
        from envlock.image.layers import LayerTars  # noqa: PLC0415

        engine = self.engine
        client = engine.client if isinstance(engine, DockerEngine) else None
        return DockerLauncher(
            client if client is not None else DockerEngine().client,
            bytecode_root=self.cache.bytecode,
            version=self._engine_version if client is not None else None,
            precompile=self.environ.get(PRECOMPILE_ENV, "1") != "0",
            layer_tars=LayerTars(self.cache.layers, self.cache.bases),
        )

    @staticmethod
    def choose_runtime(given: str | None, configured: str = "docker") -> str:
        """The runtime for this invocation: --runtime, else [tool.envlock] runtime (or a job's), else docker; it is
        handed to what needs it (`run_tools(runtime)`), never kept here."""
        from envlock.engine.runtimes import RUNTIMES  # noqa: PLC0415
        from envlock.errors import UsageError  # noqa: PLC0415

        chosen = given or configured
        if chosen not in RUNTIMES:
            raise UsageError(f"unknown runtime {chosen!r}", hint=f"use --runtime {' | '.join(RUNTIMES)}")
        return chosen

    @property
    def slurm(self) -> Slurm:
        """The Slurm client (sbatch, scontrol, scancel)."""
        if self.slurm_ is None:
            from envlock.cluster.slurm import Slurm  # noqa: PLC0415

            self.slurm_ = Slurm()
        return self.slurm_

    @property
    def bases(self) -> BaseStore:
        """The store of bases built from recipes."""
        if self.bases_ is None:
            from envlock.image.bases import BaseStore, MmdebstrapBuilder  # noqa: PLC0415

            self.bases_ = BaseStore(self.cache.bases, MmdebstrapBuilder())
        return self.bases_

    def resolver(self, name: str) -> Resolver:
        """A resolver by name: uv or pip-tools."""
        if self.resolvers is not None and name in self.resolvers:
            return self.resolvers[name]
        if name == "uv":
            from envlock.lock.uv import UvResolver  # noqa: PLC0415

            return UvResolver()
        if name == "pip-tools":
            from envlock.lock.piptools import PipToolsResolver  # noqa: PLC0415

            return PipToolsResolver()
        from envlock.errors import UsageError  # noqa: PLC0415

        raise UsageError(f"unknown resolver {name!r}", hint="use --resolver uv or --resolver pip-tools")

    def builder(self, index_urls: Sequence[str] = (), progress: Progress = no_progress) -> Builder:
        """A Builder over the user's caches: wheel cache, layer store and bases."""
        if self.builder_for is not None:
            return self.builder_for(index_urls, progress)
        from envlock.image.build import Builder  # noqa: PLC0415
        from envlock.image.layers import LayerStore  # noqa: PLC0415
        from envlock.image.wheels import HttpFetcher, WheelCache  # noqa: PLC0415

        cache = WheelCache(self.cache.wheels, HttpFetcher(index_urls))
        return Builder(self.engine, cache, LayerStore(self.cache.layers), self.bases, self.say, progress)

    def tracker(self, uri: str) -> Tracker:
        """The MLflow tracker for a URI."""
        if self.tracker_for is not None:
            return self.tracker_for(uri)
        from envlock.run.tracking import MlflowTracker, tracking_target  # noqa: PLC0415

        return MlflowTracker(tracking_target(uri))

    def registry(self, address: str) -> Registry:
        """A registry client for host[:port] (plain HTTP where $ENVLOCK_INSECURE_REGISTRIES names it, as for
        loopback; TLS verified everywhere else)."""
        if self.registry_for is not None:
            return self.registry_for(address)
        from envlock.image.registry import HttpRegistry, insecure_registries  # noqa: PLC0415

        return HttpRegistry(address, insecure=True if address in insecure_registries(self.environ) else None)

    def upstream(self, ref: str) -> UpstreamBase:
        """An upstream base from the engine (pulled by digest if absent), exported once into the layer store."""
        if self.upstream_for is not None:
            return self.upstream_for(ref)
        import tempfile  # noqa: PLC0415

        from envlock.fsutil import shared_scratch  # noqa: PLC0415
        from envlock.image.bases import export_upstream  # noqa: PLC0415
        from envlock.image.layers import LayerStore  # noqa: PLC0415

        shared_scratch(self.cache.scratch)
        with tempfile.TemporaryDirectory(prefix="upstream-", dir=self.cache.scratch) as scratch:
            return export_upstream(ref, self.engine, LayerStore(self.cache.layers), Path(scratch))

    def probe(self, runtime: str = "docker") -> HostState:
        """This host's driver, GPUs, CPU, kernel and engine version (NVML; a CPU host is a normal host)."""
        from envlock.run.hostprobe import PynvmlAdapter, probe_host  # noqa: PLC0415

        nvml: Nvml = self.nvml_ if self.nvml_ is not None else PynvmlAdapter()
        if self.docker_version is not None:
            return probe_host(nvml, docker_version=self.docker_version)
        # Under Podman or Charliecloud the Docker engine is not asked: most HPC nodes have none.
        return probe_host(nvml, docker_version=self._engine_version if runtime == "docker" else lambda: None)

    def _engine_version(self) -> str | None:
        """The Docker engine's version, asked once (the host probe and the run record's runtime both name it)."""
        from envlock.engine.docker import DockerEngine  # noqa: PLC0415

        if not self._engine_versions:
            engine = self.engine
            found = engine.client.version().get("Version") if isinstance(engine, DockerEngine) else None
            self._engine_versions.append(str(found) if found else None)
        return self._engine_versions[0]

    def compile_bytecode(self, image_id: str) -> None:
        """Start filling the image's bytecode folder with its own interpreter, in the background (the Docker engine
        that built it; a failure is a warning: runs then compile what they import, as before)."""
        from envlock.engine.docker import DockerEngine  # noqa: PLC0415
        from envlock.engine.launch import DockerLauncher  # noqa: PLC0415
        from envlock.errors import EnvlockError  # noqa: PLC0415

        if not isinstance(self.engine, DockerEngine):
            return
        launcher = self.launcher("docker")
        if not isinstance(launcher, DockerLauncher):
            return
        try:
            started = launcher.compile_bytecode(image_id, f"{os.getuid()}:{os.getgid()}")
            if started is not None:
                seeded = started.seeded
                if seeded is not None and seeded.files:
                    self.say(
                        f"took {seeded.files} bytecode files of the layers {image_id[:19]} shares with "
                        f"{seeded.sources} other image{'s' if seeded.sources != 1 else ''} ({seeded.seconds:.2f} s)"
                    )
                self.say(f"compiling the bytecode of {image_id[:19]} in the background")
        except EnvlockError as exc:
            self.say(f"warning: could not compile the bytecode of {image_id[:19]}: {exc.message}")

    def register_root(self, project_dir: Path, repository: str) -> None:
        """Register the project as a gc root of the cache (image.roots), so that `envlock gc` run by any user of
        the cache keeps what it needs; a cache this user may not write is left as it is."""
        from envlock.image.roots import register_root  # noqa: PLC0415

        register_root(self.cache, project_dir, repository)

    def signing_key(self, flag: Path | None) -> SigningKey | None:
        """The key chosen by --key or $ENVLOCK_SIGNING_KEY (None: attestations are written unsigned)."""
        from envlock.signing import load_signing_key  # noqa: PLC0415

        return load_signing_key(flag, self.environ)

    def attest_run(self, run_dir: Path, key: SigningKey | None) -> None:
        """A finished run's attestation, written beside its record (`envlock attest`)."""
        Attester(key, self.say).run_ended(run_dir)

    def evidence(self, flag: Path | None = None, *, strict: bool = True) -> Attester:
        """The run core's evidence writer, signing with --key or $ENVLOCK_SIGNING_KEY. Not `strict` (a listing
        that settles runs): an unusable key is a warning and the attestation is written unsigned."""
        from envlock.errors import UsageError  # noqa: PLC0415

        try:
            key = self.signing_key(flag)
        except UsageError as exc:
            if strict:
                raise
            self.say(f"warning: {exc.message}: runs settled now are attested unsigned")
            key = None
        return Attester(key, self.say)

    def remove_container(self, name: str, runtime: str = "docker") -> None:
        """Remove a run's container under `runtime`; a failure is a warning (the engine may be down)."""
        from envlock.errors import EnvlockError  # noqa: PLC0415

        try:
            self.launcher(runtime).remove(name)
        except EnvlockError as exc:
            self.say(f"warning: could not remove container {name}: {exc.message}")

    def run_tools(self, runtime: str = "docker", evidence: Attester | None = None) -> RunTools:
        """What the run stage needs of the outside world under `runtime`, from this root (runs attested by
        `evidence`, default: a writer signing with $ENVLOCK_SIGNING_KEY)."""
        from envlock.run.service import RunTools  # noqa: PLC0415

        return RunTools(
            evidence=evidence or self.evidence(),
            engine=self.engine,
            launcher=partial(self.launcher, runtime),
            probe=partial(self.probe, runtime),
            builder=self.builder,
            output=self.write,
            report=self.say,
            environ=self.environ,
        )


@dataclass(frozen=True)
class Attester:
    """The evidence writer handed to the run core: every run that ends gets its attestation, signed when a key is
    configured. The attestation's modules load while the container starts (see `imports`)."""

    key: SigningKey | None
    say: Callable[[str], None]
    imports: tuple[str, ...] = ("envlock.evidence.attest",)
    said: set[Path] = field(default_factory=set)  # run folders already reported (reproduce attests twice)

    def image_built(self, project_dir: Path, plan: ImagePlan, image_id: str, pushed: str | None) -> None:
        """The image's provenance in the project's .envlock/attestations/ (signed when a key is configured)."""
        from envlock.image.provenance import write_image_attestation  # noqa: PLC0415

        path, _ = write_image_attestation(project_dir, plan, image_id, pushed, self.key)
        self.say(f"provenance {path} ({'signed' if self.key else 'unsigned: no key'})")

    def run_ended(self, run_dir: Path) -> None:
        """Attest the run whose record in `run_dir` is final."""
        from envlock.evidence.attest import attest_run  # noqa: PLC0415

        path = attest_run(run_dir, self.key)
        signer = f"signed by {self.key.public.keyid[:16]}" if self.key else "unsigned: no key"
        self.say(f"attestation {path} ({signer})" if run_dir not in self.said else f"attestation {path} made again")
        self.said.add(run_dir)


@dataclass(frozen=True)
class Invocation:
    """What the CLI was started with: the composition root, and `envlock submit`'s sbatch options and command
    (split from the arguments before parsing: they are sbatch's and the user's, not envlock's options)."""

    wiring: Wiring
    sbatch_args: tuple[str, ...] = ()
    submit_command: tuple[str, ...] = ()


def invocation_of(ctx: typer.Context) -> Invocation:
    """The invocation the CLI was started with (`run(argv, wiring)`), shared by every command."""
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):  # a command invoked outside `run` (never by users)
        root.obj = Invocation(root.obj if isinstance(root.obj, Wiring) else Wiring())
    found: Invocation = root.obj
    return found


def wiring_of(ctx: typer.Context) -> Wiring:
    """The composition root the CLI was started with, shared by every command."""
    return invocation_of(ctx).wiring
