"""Launch a command in the pinned image: by image ID, as the invoking user, streamed live, always cleaned up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from envlock.engine.docker import translated
from envlock.engine.runtimes import RuntimeInfo
from envlock.errors import CANNOT_EXECUTE, NOT_FOUND, EngineError

WORKDIR = "/work"
# cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2); harmless without a GPU.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def determinism_env(seed: int, image_id: str, lock_hash: str) -> dict[str, str]:
    """The variables every envlock launch sets, wherever it runs (Docker here, a Kubernetes Job there)."""
    return {
        "PYTHONHASHSEED": str(seed),
        "ENVLOCK_SEED": str(seed),
        "CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE_CONFIG,
        "ENVLOCK_IMAGE_ID": image_id,
        "ENVLOCK_LOCK_HASH": lock_hash,
    }


Output = Callable[[str, bytes], None]  # ("stdout" | "stderr", bytes)


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


class Launcher(Protocol):
    """Runs a LaunchSpec to completion."""

    def run(self, spec: LaunchSpec, output: Output) -> int:
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


def bind_mounts(spec: LaunchSpec) -> list[Any]:
    """The project at /work and the extra directories, as mount objects: `volumes` strings split on `:`."""
    import docker.types  # noqa: PLC0415

    project = docker.types.Mount(target=WORKDIR, source=str(spec.project_dir.resolve()), type="bind")
    extra = [docker.types.Mount(target=str(path), source=str(path), type="bind") for path in spec.mounts]
    return [project, *extra]


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


class DockerLauncher:
    """Launcher through docker-py."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, spec: LaunchSpec, output: Output) -> int:
        """Create, attach, start, stream, wait, remove."""
        requests = [gpu_request(spec)] if spec.gpus else []
        with translated(f"start the container for {spec.image_id[:19]}"):
            container = self.client.containers.create(
                spec.image_id,
                spec.command,
                name=spec.name,
                labels=spec.labels,
                environment=spec.environment,
                working_dir=WORKDIR,
                mounts=bind_mounts(spec),
                network_mode="host" if spec.host_network else None,
                user=spec.user,
                device_requests=requests,
                detach=True,
            )
        try:
            with translated("run the container"):
                stream = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
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
                result = container.wait()
            code = int(result.get("StatusCode", 1))
            if result.get("Error"):
                raise EngineError(f"the container failed: {result['Error']}")
            return code
        finally:
            # Also on Ctrl-C: stop and remove, so nothing keeps running behind the user's back.
            with translated("remove the container"):
                container.remove(force=True)

    def remove(self, name: str) -> None:
        """Force-remove a container by name; absent is fine."""
        import docker.errors  # noqa: PLC0415

        with translated(f"remove container {name}"):
            try:
                self.client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                return

    def runtime(self) -> RuntimeInfo:
        """Docker and the engine's version."""
        with translated("ask Docker for its version"):
            version = self.client.version().get("Version")
        return RuntimeInfo("docker", str(version) if version else None)
