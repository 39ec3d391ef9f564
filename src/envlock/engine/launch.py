"""Launch a command in the pinned image: by image ID, as the invoking user, streamed live, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from envlock.engine.bytecode import ImageStack, LayerTars, Seeded, read_stack, seed
from envlock.engine.docker import translated
from envlock.engine.runtimes import RuntimeInfo, StreamSink
from envlock.errors import CANNOT_EXECUTE, NOT_FOUND, EngineError, EnvlockError

WORKDIR = "/work"
# Where a run's Python writes and finds bytecode (PYTHONPYCACHEPREFIX): a host folder per image ID, so the
# image stays free of .pyc files (and its ID free of the compiler's patch version) while every start after
# the first imports from bytecode.
BYTECODE_DIR = "/var/cache/envlock-pyc"
# Written into the bytecode folder once the image's own interpreter has compiled everything on its sys.path.
BYTECODE_DONE = ".compiled"
# The label of a compile's container: the image it compiles.
BYTECODE_LABEL = "dev.envlock.bytecode"
# Run in the image, in the background, when it is built or first used: the first run then imports from bytecode
# like the tenth. Timestamp pycs, as an import writes them (SOURCE_DATE_EPOCH would switch compileall to hashes).
# Each source is first checked in this one process as the import system checks it (magic, flags 0, the source's
# mtime and size in the pyc's header); only the stale ones are compiled, in a process pool when there are many. A
# folder seeded from other images (engine.bytecode) is then done in ~0.4 s of one core, where compileall's pool,
# which hands every file to a worker, took ~3 s of both cores on 9,600 up-to-date files and slowed a run started
# meanwhile by up to 2x. Roots: the arguments, else sys.path (the tests give a folder of their own).
COMPILE_POOL_FROM = 64  # stale sources from which the compile is spread over the cores
COMPILE_SCRIPT = f"""\
import compileall, functools, importlib.util, os, py_compile, sys
os.nice(10)  # within the container: another container's run is held off by its CPU shares (compile_bytecode)
mode = py_compile.PycInvalidationMode.TIMESTAMP
head = importlib.util.MAGIC_NUMBER + bytes(4)

def sources(root):
    for folder, folders, names in os.walk(root):  # links to folders are not followed, as in compileall
        folders[:] = sorted(name for name in folders if name != "__pycache__")
        yield from (os.path.join(folder, name) for name in sorted(names) if name.endswith(".py"))

def current(source):
    try:
        info = os.stat(source)
        with open(importlib.util.cache_from_source(source), "rb") as pyc:
            found = pyc.read(16)
    except (OSError, ValueError):
        return False
    stamp = (int(info.st_mtime) & 0xFFFFFFFF, info.st_size & 0xFFFFFFFF)
    return found == head + b"".join(n.to_bytes(4, "little") for n in stamp)

roots = sys.argv[1:] or [path for path in sys.path if os.path.isdir(path)]
stale = [s for s in dict.fromkeys(s for root in roots for s in sources(root)) if not current(s)]
build = functools.partial(compileall.compile_file, quiet=2, force=True, invalidation_mode=mode)
if len(stale) >= {COMPILE_POOL_FROM} and (os.cpu_count() or 1) > 1:
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor() as pool:
        list(pool.map(build, stale, chunksize=8))
else:
    for source in stale:
        build(source)
open(os.path.join(sys.pycache_prefix or "{BYTECODE_DIR}", "{BYTECODE_DONE}"), "w").close()
"""
# The compile container's CPU shares (Docker's least): a run started meanwhile, a container with the default 1024
# in a cgroup of its own, where the compile's nice does not reach, gets the cores first. Measured on 2 cores, an
# import of torch, transformers and datasets beside compileall's pool: 2.7-4.1 s at 1024 shares, 2.1-2.3 s at 2.
COMPILE_CPU_SHARES = 2
# cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2); harmless without a GPU.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
# A home every uid can write (the image has no home for an arbitrary --user; HOME=/ is not writable): a tmpfs,
# world-writable and sticky like /tmp, gone with the container.
CONTAINER_HOME = "/tmp/envlock-home"  # noqa: S108  (a tmpfs of the container's own, not the host's /tmp)


# Docker and Podman give a container a 64 MiB /dev/shm: PyTorch's DataLoader workers hand batches over through it
# and die with "Bus error" past that. A run gets a /dev/shm as large as the host's own (a tmpfs: memory is used only
# as it is written, and counts against the container's memory like any other).
ENGINE_SHM_BYTES = 64 * 1024 * 1024
SHM = Path("/dev/shm")  # noqa: S108  (the shared-memory mount itself, sized, never written here)


def host_shm_bytes(shm: Path = SHM) -> int:
    """The host's /dev/shm size (a Linux host's default: half its memory); half the physical memory where it has
    none; never below the engines' 64 MiB."""
    try:
        stat = os.statvfs(shm)
        size = stat.f_blocks * stat.f_frsize
    except OSError:
        size = 0
    if size <= 0:
        with contextlib.suppress(ValueError, OSError):
            size = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    return max(size, ENGINE_SHM_BYTES)


# The login name inside the container. The image's /etc/passwd has no entry for the invoking uid, so Python's
# getpass.getuser() (torch.compile's and Triton's cache folders, among others) fails with "getpwuid(): uid not
# found" unless USER or LOGNAME is set. One fixed name: the same wherever it runs, and no host login name in a
# record that may be shared.
CONTAINER_USER = "envlock"


def home_env() -> dict[str, str]:
    """HOME and XDG_CACHE_HOME inside the container: writable for any uid (~/.cache, torch hub, HF caches); USER and
    LOGNAME, so getpass.getuser() answers for a uid the image does not know."""
    return {
        "HOME": CONTAINER_HOME,
        "XDG_CACHE_HOME": f"{CONTAINER_HOME}/.cache",
        "USER": CONTAINER_USER,
        "LOGNAME": CONTAINER_USER,
    }


def determinism_env(seed: int, image_id: str, lock_hash: str) -> dict[str, str]:
    """The variables every envlock launch sets, wherever it runs (Docker here, a Kubernetes Job there)."""
    return {
        "PYTHONHASHSEED": str(seed),
        "ENVLOCK_SEED": str(seed),
        "CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE_CONFIG,
        "ENVLOCK_IMAGE_ID": image_id,
        "ENVLOCK_LOCK_HASH": lock_hash,
    }


@dataclass(frozen=True)
class LaunchSpec:
    """One container run; the command is an argument list, never a shell string."""

    image_id: str
    command: list[str]
    name: str
    project_dir: Path
    environment: dict[str, str]
    user: str  # "uid:gid"
    gpus: bool
    gpu_devices: tuple[str, ...] = ()  # with gpus: only these (indices or UUIDs); empty: all of the host's
    labels: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Path, ...] = ()  # host directories mounted at the same path (e.g. an MLflow file store)
    host_network: bool = False  # share the host's network (a tracking server on its loopback)
    read_only: tuple[tuple[Path, str], ...] = ()  # host path → container path, mounted read-only (declared inputs)


class Launcher(Protocol):
    """Runs a LaunchSpec to completion."""

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        """The command's exit code; the container is gone afterwards, also on Ctrl-C."""
        ...

    def remove(self, name: str) -> None:
        """Remove a container by name if it exists (an orphan of a killed envlock)."""
        ...

    def runtime(self) -> RuntimeInfo:
        """Which runtime this is and its version, for the run record."""
        ...


def gpu_request(spec: LaunchSpec) -> Any:
    """docker's --gpus: all of them, or only the devices given (a scheduler's allotment on a shared node)."""
    import docker.types  # noqa: PLC0415

    if spec.gpu_devices:
        return docker.types.DeviceRequest(device_ids=list(spec.gpu_devices), capabilities=[["gpu"]])
    return docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])


def bind_mounts(spec: LaunchSpec, bytecode: Path | None = None) -> list[Any]:
    """The project at /work, the extra directories and the bytecode folder, as mount objects (`volumes` strings
    split on `:`)."""
    import docker.types  # noqa: PLC0415

    project = docker.types.Mount(target=WORKDIR, source=str(spec.project_dir.resolve()), type="bind")
    extra = [docker.types.Mount(target=str(path), source=str(path), type="bind") for path in spec.mounts]
    inputs = [
        docker.types.Mount(target=inside, source=str(host.resolve()), type="bind", read_only=True)
        for host, inside in spec.read_only
    ]
    cache = [docker.types.Mount(target=BYTECODE_DIR, source=str(bytecode), type="bind")] if bytecode else []
    return [project, *extra, *inputs, *cache]


def bytecode_folder(root: Path | None, image_id: str) -> Path | None:
    """The image's bytecode folder under root, made (as the invoking user, who runs the container) if needed.

    Keyed by image ID: sources in every envlock image carry the same mtime (the lock's epoch), so bytecode of
    one image would pass Python's (mtime, size) check for a same-sized file of another. None: no cache (no root
    given, or it cannot be made: the run goes on and compiles in memory, as before).
    """
    if root is None:
        return None
    folder = root / image_id.removeprefix("sha256:")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)  # in use: `envlock gc` leaves folders touched in its grace period alone
    except OSError:
        return None
    return folder


@dataclass(frozen=True)
class Compiling:
    """A background compile started; `seeded`: what its folder took from other images' folders first (None: not
    seeded: no layer tars given, or not an envlock image)."""

    seeded: Seeded | None


def _start(container: Any) -> tuple[int, str] | None:
    """Start the container; (126 or 127, why) when its command cannot be run, the way `docker run` reports it."""
    import docker.errors  # noqa: PLC0415

    try:
        container.start()
    except docker.errors.APIError as exc:
        text = str(getattr(exc, "explanation", None) or exc)
        if "executable file not found" in text or "no such file or directory" in text:
            return NOT_FOUND, f"the command was not found in the image ({_reason(text)})"
        if "permission denied" in text or "is a directory" in text:
            return CANNOT_EXECUTE, f"the command cannot be executed ({_reason(text)})"
        raise
    return None


def _reason(text: str) -> str:
    """The runtime's own words, without the OCI runtime's preamble."""
    return text.rsplit("exec: ", 1)[-1].split(": unknown", maxsplit=1)[0].strip()


class _Waiter:
    """`POST /containers/ID/wait?condition=removed`, sent from a thread: its answer is the exit status."""

    def __init__(self, container: Any) -> None:
        self._outcome: list[dict[str, Any]] = []
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._wait, args=(container,), name="envlock-wait", daemon=True)
        self._thread.start()

    def _wait(self, container: Any) -> None:
        try:
            self._outcome.append(container.wait(condition="removed"))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
            self._failure.append(exc)

    def result(self) -> dict[str, Any]:
        """The engine's answer once the container is gone."""
        self._thread.join()
        if self._failure:
            raise self._failure[0]
        return self._outcome[0]


# How often (0.1 s apart) an interrupted create looks for the container the engine may still be making.
CREATE_GRACE_TRIES = 5


class DockerLauncher:
    """Launcher through docker-py: the requests `docker run --rm` makes, and no more."""

    def __init__(
        self,
        client: Any,
        bytecode_root: Path | None = None,
        version: Callable[[], str | None] | None = None,
        *,
        precompile: bool = True,
        layer_tars: LayerTars | None = None,
    ) -> None:
        self.client = client
        self.bytecode_root = bytecode_root
        self.version = version  # the engine's version where the caller has it already (one request fewer)
        self.precompile = precompile  # fill a new image's bytecode folder in the background ($ENVLOCK_PRECOMPILE=0: no)
        # Where a layer's tar is in envlock's cache, by diff_id: a new folder is first seeded from other images'
        # folders for the layers both images share (engine.bytecode); None: no seeding.
        self.layer_tars = layer_tars

    def compile_bytecode(self, image_id: str, user: str) -> Compiling | None:
        """Fill the image's bytecode folder with the image's own interpreter, in a container left running in the
        background (auto-removed, no network); None when nothing was started: switched off, no folder, filled
        already, or a compile of it running (its container's name is taken).

        Before it starts, with layer tars to list: this user's running compiles of images that share a layer with
        this one above the base are stopped (this compile does their work too; theirs resumes after their next run,
        seeded from this folder), and the folder is seeded from other images' folders (engine.bytecode)."""
        if (
            not self.precompile
            or self.bytecode_root is None
            or (self.bytecode_root / image_id.removeprefix("sha256:") / BYTECODE_DONE).exists()
        ):
            return None  # filled already: nothing touched
        bytecode = bytecode_folder(self.bytecode_root, image_id)
        if bytecode is None:
            return None
        import docker.errors  # noqa: PLC0415
        import docker.types  # noqa: PLC0415

        with translated(f"compile the bytecode of {image_id[:19]}"):
            try:
                container = self.client.containers.create(
                    image_id,
                    ["python", "-c", COMPILE_SCRIPT],
                    name=f"envlock-pyc-{image_id.removeprefix('sha256:')[:12]}-{os.getuid()}",
                    labels={BYTECODE_LABEL: image_id},
                    environment={"PYTHONPYCACHEPREFIX": BYTECODE_DIR},
                    mounts=[docker.types.Mount(target=BYTECODE_DIR, source=str(bytecode), type="bind")],
                    user=user,
                    network_disabled=True,
                    cpu_shares=COMPILE_CPU_SHARES,
                    auto_remove=True,
                    detach=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # Conflict: that name is compiling already
                    return None
                raise
            try:
                seeded = self._seed(image_id, bytecode)
                container.start()
            except BaseException:
                _remove_quietly(container)
                raise
        return Compiling(seeded)

    def _seed(self, image_id: str, bytecode: Path) -> Seeded | None:
        """Stop the compiles this one supersedes, then seed its folder (None: no layer tars, not an envlock image)."""
        if self.layer_tars is None or self.bytecode_root is None:
            return None
        stack = self._stack(image_id)
        if stack is None:
            return None
        self._stop_superseded(image_id, stack)
        return seed(self.bytecode_root, bytecode, stack, self.layer_tars)

    def _stop_superseded(self, image_id: str, stack: ImageStack) -> None:
        """Kill this user's running compiles of images sharing a layer above the base with `stack` (their pycs so
        far are kept: Python writes each by rename)."""
        import docker.errors  # noqa: PLC0415

        root = self.bytecode_root
        if root is None:
            return
        mine = set(stack.diff_ids[len(stack.base) :])
        running = self.client.containers.list(filters={"label": BYTECODE_LABEL}, sparse=True)
        for container in running:
            other = str((container.attrs.get("Labels") or {}).get(BYTECODE_LABEL, ""))
            names = container.attrs.get("Names") or []
            if other == image_id or not any(str(n).endswith(f"-{os.getuid()}") for n in names):
                continue
            theirs = read_stack(root / other.removeprefix("sha256:"))
            if theirs is None or theirs.base != stack.base or not mine & set(theirs.diff_ids[len(theirs.base) :]):
                continue
            with contextlib.suppress(docker.errors.APIError):  # gone meanwhile: its compile ended
                container.kill()

    def _stack(self, image_id: str) -> ImageStack | None:
        """The image's layers and its base's, from the engine (None: not an envlock image, or not a shape we know)."""
        with translated(f"inspect image {image_id[:19]}"):
            attrs = self.client.api.inspect_image(image_id)
        layers = (attrs.get("RootFS") or {}).get("Layers") or []
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        base = str(labels.get("dev.envlock.base") or "")
        return ImageStack.parse({"diff_ids": layers, "base": base.split(",") if base else []})

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        """Create (auto-removed), attach, wait (from a thread), start, stream; the engine removes it."""
        code = self._run(spec, output)
        # An image first used here (built by someone else, or its folder pruned): compiled after this run, in the
        # background, for the next one (not beside it: the two would share the cores).
        self.compile_bytecode(spec.image_id, spec.user)
        return code

    def _run(self, spec: LaunchSpec, output: StreamSink) -> int:
        requests = [gpu_request(spec)] if spec.gpus else []
        bytecode = bytecode_folder(self.bytecode_root, spec.image_id)
        environment = {**spec.environment, "PYTHONPYCACHEPREFIX": BYTECODE_DIR} if bytecode else spec.environment
        with translated(f"start the container for {spec.image_id[:19]}"), self._removed_if_interrupted(spec.name):
            # What `containers.create` sends, minus the inspect it makes afterwards to fill a model we never read:
            # the container's ID is all that attach, wait, start and remove need (one round trip fewer per run).
            api = self.client.api
            host_config = api.create_host_config(
                mounts=bind_mounts(spec, bytecode),
                tmpfs={CONTAINER_HOME: "mode=1777,exec"},
                network_mode="host" if spec.host_network else None,
                shm_size=host_shm_bytes(),
                device_requests=requests,
                auto_remove=True,  # as `docker run --rm`: the engine removes it, no request of ours at the end
            )
            created = api.create_container(
                spec.image_id,
                spec.command,
                name=spec.name,
                labels=spec.labels,
                environment=environment,
                working_dir=WORKDIR,
                user=spec.user,
                detach=True,
                host_config=host_config,
            )
            container = self.client.containers.prepare_model({"Id": created["Id"]})
        removed = False
        try:
            with translated("run the container"):
                stream = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
                # Asked before the start, answered as the container goes: no round trip after the output ends.
                waiting = _Waiter(container)
                cannot = _start(container)
                if cannot is not None:  # as `docker run` does: 127 not found, 126 not executable
                    code, why = cannot
                    output("stderr", f"envlock: {why}\n".encode())
                    return code
                for stdout, stderr in stream:
                    if stdout:
                        output("stdout", stdout)
                    if stderr:
                        output("stderr", stderr)
                result = waiting.result()
                removed = True
            code = int(result.get("StatusCode", 1))
            if result.get("Error"):
                raise EngineError(f"the container failed: {result['Error']}")
            return code
        finally:
            # Also on Ctrl-C or a failed start: stop and remove, so nothing keeps running behind the user's back.
            if not removed:
                _remove_quietly(container)

    @contextlib.contextmanager
    def _removed_if_interrupted(self, name: str) -> Iterator[None]:
        """Ctrl-C (or SIGTERM) while the engine creates the container: it may exist already, with no ID of it here
        yet; removed by its name (a run's own), so no created container stays behind the interrupted run."""
        try:
            yield
        except KeyboardInterrupt:
            with contextlib.suppress(EnvlockError):
                # The engine may finish a create whose request was cut off: looked for a little while, not once.
                for _ in range(CREATE_GRACE_TRIES):
                    if self._removed(name):
                        break
                    time.sleep(0.1)
            raise

    def remove(self, name: str) -> None:
        """Force-remove a container by name; absent is fine."""
        self._removed(name)

    def _removed(self, name: str) -> bool:
        """Force-remove a container by name; whether there was one."""
        import docker.errors  # noqa: PLC0415

        with translated(f"remove container {name}"):
            try:
                self.client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                return False
        return True

    def runtime(self) -> RuntimeInfo:
        """Docker and the engine's version."""
        if self.version is not None:
            return RuntimeInfo("docker", self.version())
        with translated("ask Docker for its version"):
            version = self.client.version().get("Version")
        return RuntimeInfo("docker", str(version) if version else None)


def _remove_quietly(container: Any) -> None:
    """Force-remove; gone already (the engine's auto-remove) or going is fine."""
    import docker.errors  # noqa: PLC0415

    with translated("remove the container"):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
