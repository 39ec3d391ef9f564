"""Podman (daemonless; rootless where the user's namespaces allow): the image pulled by digest from the registry
(no Docker engine on the node) or, for one never pushed, loaded from envlock's own verified export of it with
`podman load`; either way checked by ID (Podman keeps the config bytes, so its ID is the engine's); then
`podman run`."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

from envlock.engine.launch import WORKDIR, LaunchSpec, host_shm_bytes
from envlock.engine.runtimes import (
    Command,
    Export,
    RuntimeInfo,
    Stream,
    StreamSink,
    first_line,
    run_tool,
    stream_command,
    string_labels,
)
from envlock.errors import EngineError
from envlock.fsutil import shared_scratch

# Where Podman cannot raise its limits (a container or an unprivileged user namespace), runc fails with
# "error setting rlimit type 7": ask for limits every such host allows.
ULIMITS = ("--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024")


def bind_option(source: Path, target: str, *, read_only: bool = False) -> str:
    """`--mount=type=bind,src=…,dst=…`, its fields written as one CSV row, as Podman reads them: a path with a `:`
    (which `--volume` splits on) or a `,` (quoted) is mounted as it is named."""
    row = io.StringIO()
    fields = ["type=bind", f"src={source}", f"dst={target}", *(["ro=true"] if read_only else [])]
    csv.writer(row, lineterminator="").writerow(fields)
    return f"--mount={row.getvalue()}"


class PodmanLauncher:
    """Launcher through the podman command."""

    name = "podman"

    def __init__(
        self,
        export: Export,
        scratch: Path,
        *,
        insecure: Collection[str] = (),
        command: Command = run_tool,
        stream: Stream = stream_command,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.export = export
        self.scratch = scratch
        self.insecure = insecure  # registries the site declared plain HTTP: pulled with --tls-verify=false
        self.command = command
        self.stream = stream
        self.environ = environ

    def has_image(self, image_id: str) -> bool:
        """True when Podman's store has the image under exactly this ID."""
        done = self.command(["podman", "image", "inspect", "--format", "{{.Id}}", image_id.removeprefix("sha256:")])
        return done.code == 0 and done.stdout.strip().removeprefix("sha256:") == image_id.removeprefix("sha256:")

    def prepare(self, image_id: str) -> None:
        """Load the image into Podman's store once (from a verified export), and check it arrived by ID."""
        if self.has_image(image_id):
            return
        shared_scratch(self.scratch)
        with tempfile.TemporaryDirectory(prefix="podman-", dir=self.scratch) as scratch:
            archive = Path(scratch) / "image.tar"
            self.export(image_id, archive)
            done = self.command(["podman", "load", "--quiet", "--input", str(archive)])
        if done.code != 0:
            raise EngineError(f"podman could not load {image_id[:19]}: {first_line(done)}")
        if not self.has_image(image_id):
            raise EngineError(f"podman loaded the image but not as {image_id[:19]}: refusing to run it")

    def pull(self, image_id: str, pushed: str) -> None:
        """`podman pull host/repository@sha256:…` (Podman checks every blob against its digest), then the image
        accepted only under `image_id`: a digest that gives another image is removed again and refused."""
        if self.has_image(image_id):
            return
        host = pushed.split("/", maxsplit=1)[0]
        tls = ["--tls-verify=false"] if host in self.insecure else []
        done = self.command(["podman", "pull", "--quiet", *tls, pushed])
        if done.code != 0:
            raise EngineError(f"podman could not pull {pushed}: {first_line(done)}")
        if not self.has_image(image_id):
            self.command(["podman", "rmi", "--force", pushed])
            raise EngineError(f"podman pulled {pushed} but it is not {image_id[:19]}: refusing to run it")

    def labels(self, image_id: str) -> dict[str, str]:
        """The image's labels, as Podman's store has its config."""
        done = self.command(
            ["podman", "image", "inspect", "--format", "{{json .Labels}}", image_id.removeprefix("sha256:")]
        )
        if done.code != 0:
            raise EngineError(f"podman could not inspect {image_id[:19]}: {first_line(done)}")
        try:
            return string_labels(json.loads(done.stdout))
        except ValueError as exc:
            raise EngineError(f"podman gave no labels for {image_id[:19]}: {done.stdout.strip()[:80]!r}") from exc

    def runtime(self) -> RuntimeInfo:
        """`podman version`."""
        done = self.command(["podman", "version", "--format", "{{.Client.Version}}"])
        return RuntimeInfo("podman", done.stdout.strip() or None if done.code == 0 else None)

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        """`podman run --rm` by image ID; variables passed by name (`-e NAME`) so no value shows on a command line;
        GPUs through CDI (`--device nvidia.com/gpu=…`, from `nvidia-ctk cdi generate`); declared inputs read-only."""
        self.prepare(spec.image_id)
        gpus = [f"--device=nvidia.com/gpu={d}" for d in (spec.gpu_devices or ("all",))] if spec.gpus else []
        mounts = [
            bind_option(spec.project_dir.resolve(), WORKDIR),
            *(bind_option(m, str(m)) for m in spec.mounts),
            # Declared inputs (and the own packages' metadata), after the project's mount they lie over: read-only.
            *(bind_option(host.resolve(), inside, read_only=True) for host, inside in spec.read_only),
        ]
        args = [
            "podman",
            "run",
            "--rm",
            f"--name={spec.name}",
            f"--user={spec.user}",
            f"--workdir={WORKDIR}",
            *ULIMITS,
            f"--shm-size={host_shm_bytes()}b",  # not Podman's 64 MiB: as large as the host's (engine/launch.py)
            *mounts,
            *(f"--env={name}" for name in spec.environment),
            *(f"--label={key}={value}" for key, value in spec.labels.items()),
            *(["--network=host"] if spec.host_network else []),
            *gpus,
            spec.image_id.removeprefix("sha256:"),
            *spec.command,
        ]
        try:
            return self.stream(args, output, {**self.environ, **spec.environment})
        finally:
            self.remove(spec.name)  # also on Ctrl-C: podman's --rm does not run when podman itself is stopped

    def remove(self, name: str) -> None:
        """Force-remove a container by name; absent is fine."""
        done = self.command(["podman", "rm", "--force", "--ignore", name])
        if done.code != 0:
            raise EngineError(f"podman could not remove container {name}: {first_line(done)}")
