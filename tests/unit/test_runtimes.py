"""Podman and Charliecloud launchers through fake commands: the arguments they run, the image made ready once and
checked by content, whiteouts honoured, the runtime recorded; the runtime chosen from --runtime or the project."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from envlock.codecs import Problems
from envlock.engine.charliecloud import CharliecloudLauncher, unpack_archive
from envlock.engine.launch import ENGINE_SHM_BYTES, SHM, LaunchSpec, host_shm_bytes
from envlock.engine.podman import PodmanLauncher
from envlock.engine.runtimes import Done, StreamSink
from envlock.errors import ArchiveMismatchError, EngineError, RegistryError, SpecError
from envlock.image.catalog import platform_tag
from envlock.image.portable import oci_archive
from envlock.image.registry import Blob, PlatformManifest, index_for, manifest_for, push, push_index
from envlock.lock.spec import Spec, parse_spec
from envlock.run.records import RunRecord
from envlock.run.schema import JobRequest, RuntimeRecord
from tests.fakes import FakeRegistry


def layer(files: Mapping[str, bytes | None]) -> bytes:
    """A layer tar: a file per name (None: a directory)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def docker_archive(path: Path, layers: list[bytes], tamper: bool = False) -> str:
    """A docker-archive of the layers; returns its image ID."""
    diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin", "LANG=C.UTF-8"]},
         "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True
    ).encode()  # fmt: skip
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": "config.json", "Layers": names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, content in [("manifest.json", manifest), ("config.json", config), *zip(names, layers, strict=True)]:
            data = content + b"x" * 512 if tamper and name.endswith("layer.tar") else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return image_id


LOWER = layer({"etc": None, "etc/gone": b"1", "etc/kept": b"2", "opt": None, "opt/old": b"3", "app": b"lower"})
UPPER = layer({"etc/.wh.gone": b"", "opt/.wh..wh..opq": b"", "opt/new": b"4", "app": b"upper"})


def test_charliecloud_unpacks_layers_in_order_with_whiteouts(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER, UPPER])
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    config = unpack_archive(archive, image_id, rootfs)
    assert config["config"]["Env"] == ["PATH=/usr/bin", "LANG=C.UTF-8"]
    assert sorted(p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")) == [
        "app", "etc", "etc/kept", "opt", "opt/new"
    ]  # fmt: skip
    assert (rootfs / "app").read_bytes() == b"upper"


def test_charliecloud_refuses_an_export_that_is_not_the_image(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER])
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with pytest.raises(ArchiveMismatchError) as other:
        unpack_archive(archive, "sha256:" + "0" * 64, rootfs)
    zeros = "sha256:" + "0" * 12
    assert other.value.message == f"the export of {zeros} holds image {image_id[:19]}, not {zeros}"
    docker_archive(archive, [LOWER], tamper=True)
    with pytest.raises(ArchiveMismatchError) as tampered:
        unpack_archive(archive, image_id, rootfs)
    layer = f"{hashlib.sha256(LOWER).hexdigest()}/layer.tar"
    assert tampered.value.message == (
        f"the export of {image_id[:19]} is corrupt or tampered: layer {layer} is not sha256:{layer[:12]}"
    )
    assert tampered.value.exit_code == 15 and list(rootfs.iterdir()) == [], "nothing of it is written"


class Commands:
    """Records the commands a launcher runs; answers like the real tools."""

    def __init__(self, loaded: bool = False, *, namespaces: bool = True) -> None:
        self.ran: list[list[str]] = []
        self.streamed: list[tuple[list[str], Mapping[str, str] | None]] = []
        self.loaded = loaded
        self.namespaces = namespaces  # False: a kernel with unprivileged user namespaces off
        self.env_file = ""

    def command(self, args: Sequence[str]) -> Done:
        self.ran.append(list(args))
        if args[:3] == ["podman", "image", "inspect"]:
            return Done(0, f"sha256:{args[-1]}\n", "") if self.loaded else Done(125, "", "no such image")
        if args[:2] == ["podman", "load"]:
            self.loaded = True
        if args[:1] == ["unshare"] and not self.namespaces:
            return Done(1, "", "unshare: unshare failed: Operation not permitted\n")
        if "--version" in args or args[:2] == ["podman", "version"]:
            return Done(0, "4.3.1\n" if args[0] == "podman" else "0.31\n", "")
        return Done(0, "", "")

    def stream(self, args: Sequence[str], output: StreamSink, env: Mapping[str, str] | None) -> int:
        self.streamed.append((list(args), env))
        env_file = next((a.split("=", 1)[1] for a in args if a.startswith("--set-env=")), "")
        if env_file:
            self.env_file = Path(env_file).read_text()
        output("stdout", b"ok\n")
        return 3


def charliecloud(
    tmp_path: Path, commands: Commands, environ: Mapping[str, str] = os.environ
) -> tuple[CharliecloudLauncher, str]:
    """A Charliecloud launcher over `commands` whose export is a one-layer docker-archive, and that image's ID."""
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER])
    launcher = CharliecloudLauncher(
        tmp_path / "cc", lambda _r, out: out.write_bytes(archive.read_bytes()),
        command=commands.command, stream=commands.stream, environ=environ,
    )  # fmt: skip
    return launcher, image_id


def spec(tmp_path: Path, image_id: str, **kw: object) -> LaunchSpec:
    values: dict[str, object] = dict(
        image_id=image_id, command=["python", "train.py"], name="envlock-run-x", project_dir=tmp_path,
        environment={"PYTHONHASHSEED": "0", "SECRET": "s3cret"}, user="1000:1000", gpus=False,
    )  # fmt: skip
    values.update(kw)
    return LaunchSpec(**values)  # type: ignore[arg-type]


def test_podman_loads_once_runs_by_id_and_passes_values_by_name(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER])
    exported: list[str] = []
    commands = Commands()

    def export(ref: str, out: Path) -> None:
        exported.append(ref)
        out.write_bytes(archive.read_bytes())

    launcher = PodmanLauncher(export, tmp_path / "scratch", command=commands.command, stream=commands.stream)
    got: list[bytes] = []
    gpu = spec(tmp_path, image_id, gpus=True, gpu_devices=("1",), host_network=True)
    assert launcher.run(gpu, lambda _s, data: got.append(data)) == 3 and got == [b"ok\n"]
    args, env = commands.streamed[0]
    assert args[:3] == ["podman", "run", "--rm"] and args[-3:] == [image_id[7:], "python", "train.py"]
    assert "--env=SECRET" in args and not any("s3cret" in a for a in args), "values never on the command line"
    assert env is not None and env["SECRET"] == "s3cret"
    assert {"--ulimit=nofile=1024:1024", "--device=nvidia.com/gpu=1", "--network=host", "--user=1000:1000"} <= set(args)
    assert f"--shm-size={host_shm_bytes()}b" in args, "the host's /dev/shm size, not Podman's 64 MiB"
    assert ["podman", "rm", "--force", "--ignore", "envlock-run-x"] in commands.ran
    launcher.run(spec(tmp_path, image_id), lambda _s, _d: None)
    assert exported == [image_id], "loaded once; the second run finds it by ID"
    assert launcher.runtime().name == "podman" and launcher.runtime().version == "4.3.1"


def test_podman_refuses_an_image_that_did_not_arrive_under_its_id(tmp_path: Path) -> None:
    class Never(Commands):
        def command(self, args: Sequence[str]) -> Done:
            done = super().command(args)
            return Done(125, "", "no such image") if args[:3] == ["podman", "image", "inspect"] else done

    commands = Never()
    launcher = PodmanLauncher(lambda _r, out: out.write_bytes(b""), tmp_path, command=commands.command)
    with pytest.raises(EngineError, match="refusing to run it"):
        launcher.prepare("sha256:" + "a" * 64)


def test_charliecloud_prepares_once_and_runs_with_only_envlocks_environment(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER, UPPER])
    exported: list[str] = []
    commands = Commands()

    def export(ref: str, out: Path) -> None:
        exported.append(ref)
        out.write_bytes(archive.read_bytes())

    launcher = CharliecloudLauncher(
        tmp_path / "cc", export, command=commands.command, stream=commands.stream, environ={"HOME": "/root"}
    )
    assert launcher.run(spec(tmp_path, image_id), lambda _s, _d: None) == 3
    launcher.run(spec(tmp_path, image_id), lambda _s, _d: None)
    assert exported == [image_id]
    directory = tmp_path / "cc" / image_id[7:]
    assert (directory / "rootfs" / "work").is_dir() and (directory / "rootfs" / "opt" / "new").is_file()
    args, env = commands.streamed[0]
    assert args[0] == "ch-run" and f"--bind={tmp_path.resolve()}:/work" in args and "--unset-env=*" in args
    assert args[-3:] == ["--", "python", "train.py"] and args[-4] == str(directory / "rootfs")
    assert not any("s3cret" in a for a in args) and env is not None and env["USER"]
    assert commands.env_file.splitlines() == ["PATH=/usr/bin", "LANG=C.UTF-8", "PYTHONHASHSEED=0", "SECRET=s3cret"]
    assert launcher.runtime().name == "charliecloud"


def test_charliecloud_gpus_come_from_ch_fromhost_once(tmp_path: Path) -> None:
    commands = Commands()
    launcher, image_id = charliecloud(tmp_path, commands)
    for _ in range(2):
        launcher.run(spec(tmp_path, image_id, gpus=True, gpu_devices=("0", "2")), lambda _s, _d: None)
    assert [c for c in commands.ran if c[0] == "ch-fromhost"] == [
        ["ch-fromhost", "--nvidia", str(tmp_path / "cc" / image_id[7:] / "rootfs")]
    ]
    assert "CUDA_VISIBLE_DEVICES=0,2" in commands.env_file.splitlines()


def test_the_oci_archive_is_the_same_bytes_twice(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER, UPPER])
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    assert oci_archive(archive, image_id, first, "x:1") == oci_archive(archive, image_id, second, "x:1")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames()[:2] == ["oci-layout", "index.json"]
        assert f"blobs/sha256/{image_id[7:]}" in tar.getnames()


PYPROJECT = '[project]\nname = "p"\ndependencies = ["numpy"]\n[tool.envlock]\n'


def test_runtime_in_the_project_is_validated_and_not_a_lock_input(tmp_path: Path) -> None:
    def parsed(extra: str) -> Spec:
        text = PYPROJECT + extra
        return parse_spec(tomllib.loads(text), tmp_path, tmp_path / "pyproject.toml", text)

    podman = parsed('runtime = "podman"\n')
    docker = parsed("")
    assert podman.runtime == "podman" and docker.runtime == "docker"
    assert podman.input_hash() == docker.input_hash()
    with pytest.raises(SpecError) as refused:
        parsed('runtime = "podmn"\n')
    assert "did you mean 'podman'" in " ".join(refused.value.details)


def test_the_record_names_its_runtime_and_a_job_its_requested_one() -> None:
    problems = Problems()
    assert RuntimeRecord.decode({"name": "charliecloud", "version": "0.31"}, problems, "runtime") == (
        RuntimeRecord("charliecloud", "0.31")
    )
    RuntimeRecord.decode({"name": "lxc", "version": None}, problems, "runtime")
    JobRequest.decode({"runtime": "rkt"}, problems, "scheduler.request")
    assert problems.items == [
        "runtime.name: must be one of docker, podman, charliecloud, not 'lxc'",
        "scheduler.request.runtime: must be one of docker, podman, charliecloud, not 'rkt'",
    ]
    assert JobRequest(runtime="podman").as_dict()["runtime"] == "podman"
    assert "runtime" not in JobRequest().as_dict(), "a docker job's request keeps version 2's keys"
    assert "runtime" in {f for f in RunRecord.__dataclass_fields__}


def test_platform_tags_keep_amd64_as_it_was() -> None:
    assert platform_tag("3f9a1c2b4d5e", "linux/amd64") == "3f9a1c2b4d5e"
    assert platform_tag("3f9a1c2b4d5e", "linux/arm64") == "3f9a1c2b4d5e-arm64"


def test_the_image_index_lists_each_platform_once_sorted_and_needs_its_manifests() -> None:
    registry = FakeRegistry()
    layer_blob = Blob("sha256:" + hashlib.sha256(b"x").hexdigest(), 1, data=b"x")
    entries = []
    for platform in ("linux/arm64", "linux/amd64"):
        config = json.dumps({"architecture": platform[6:]}).encode()
        ref = push(registry, "team/app", f"t-{platform[6:]}", config, [layer_blob])
        size = len(manifest_for(config, [layer_blob]))
        entries.append(PlatformManifest(platform, ref.split("@")[1], size))
    index = json.loads(index_for(entries))
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert index_for(entries) == index_for(entries[::-1]), "the same bytes whatever the build order"
    pushed = push_index(registry, "team/app", "h-index", entries)
    assert pushed == "team/app@sha256:" + hashlib.sha256(index_for(entries)).hexdigest()
    with pytest.raises(RegistryError):
        push_index(registry, "team/app", "h-index", [PlatformManifest("linux/amd64", "sha256:" + "1" * 64, 10)])


def test_podman_mounts_declared_inputs_read_only_and_takes_any_path(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    image_id = docker_archive(archive, [LOWER])
    commands = Commands(loaded=True)
    launcher = PodmanLauncher(lambda _r, _o: None, tmp_path, command=commands.command, stream=commands.stream)
    data = tmp_path / "elsewhere" / "data"  # a reproduction's inputs come from the project, not its worktree
    read_only = ((data, "/work/data"), (tmp_path / "meta", "/opt/envlock/venv/envlock-local-metadata"))
    launcher.run(spec(tmp_path, image_id, read_only=read_only), lambda _s, _d: None)
    args, _ = commands.streamed[0]
    mounts = [a for a in args if a.startswith(("--mount=", "--volume="))]
    assert mounts == [
        f"--mount=type=bind,src={tmp_path.resolve()},dst=/work",
        f"--mount=type=bind,src={data.resolve()},dst=/work/data,ro=true",
        f"--mount=type=bind,src={(tmp_path / 'meta').resolve()},dst=/opt/envlock/venv/envlock-local-metadata,ro=true",
    ], "each input read-only, over the project's own mount"
    # `--volume` splits on ":" (a project at /data/run:2 was an error, or mounted elsewhere); `--mount` is CSV.
    odd = tmp_path / 'run:2, "final"'
    odd.mkdir()
    launcher.run(spec(odd, image_id, read_only=((odd / "in,put", "/work/in,put"),)), lambda _s, _d: None)
    args, _ = commands.streamed[1]
    quoted = str(odd.resolve()).replace('"', '""')  # a quote inside a quoted CSV field is doubled
    assert [a for a in args if a.startswith("--mount=")] == [
        f'--mount=type=bind,"src={quoted}",dst=/work',
        f'--mount=type=bind,"src={quoted}/in,put","dst=/work/in,put",ro=true',
    ]


def test_charliecloud_makes_declared_inputs_read_only_in_a_namespace_of_its_own(tmp_path: Path) -> None:
    commands = Commands()
    launcher, image_id = charliecloud(tmp_path, commands, {"USER": "me"})
    project = tmp_path / "worktree"
    project.mkdir()
    data = tmp_path / "project" / "data"
    data.mkdir(parents=True)
    (data / "in.txt").write_text("original")
    meta = tmp_path / "meta"
    meta.mkdir()
    read_only = ((data / "in.txt", "/work/data/in.txt"), (meta, "/opt/meta"))
    launcher.run(spec(project, image_id, read_only=read_only), lambda _s, _d: None)
    args, _ = commands.streamed[0]
    rootfs = tmp_path / "cc" / image_id[7:] / "rootfs"
    # ch-run binds read-write only: each source is bound onto itself read-only first, in envlock's own user and
    # mount namespace; ch-run's binds of them are then read-only, and locked so in its namespace.
    assert args[:4] == ["unshare", "--user", "--map-root-user", "--mount"]
    split = args.index("ch-run")
    assert args[split - 3 : split] == [str((data / "in.txt").resolve()), str(meta.resolve()), "--"]
    run = args[split:]
    assert {"--uid=1000", "--gid=1000"} <= set(run), "the run's user, not the namespace's root"
    binds = [a for a in run if a.startswith("--bind=")]
    assert binds == [
        f"--bind={project.resolve()}:/work",
        f"--bind={(data / 'in.txt').resolve()}:/work/data/in.txt",
        f"--bind={meta.resolve()}:/opt/meta",
    ]
    assert (project / "data" / "in.txt").is_file() and (rootfs / "opt" / "meta").is_dir(), "mount points made"
    assert (data / "in.txt").read_text() == "original"
    commands.streamed.clear()
    launcher.run(spec(project, image_id), lambda _s, _d: None)
    assert commands.streamed[0][0][0] == "ch-run", "no inputs: ch-run as before"


def test_charliecloud_without_user_namespaces_refuses_read_only_inputs_before_running(tmp_path: Path) -> None:
    """Where the namespace cannot be made, the run would end with unshare's status as if it were the command's:
    envlock says why in one line, and nothing runs."""
    commands = Commands(namespaces=False)
    launcher, image_id = charliecloud(tmp_path, commands, {"USER": "me"})
    data = tmp_path / "data.txt"
    data.write_text("original")
    with pytest.raises(EngineError, match="cannot mount the declared inputs read-only under Charliecloud: unshare"):
        launcher.run(spec(tmp_path, image_id, read_only=((data, "/work/data.txt"),)), lambda _s, _d: None)
    assert commands.streamed == [], "nothing was run"
    launcher.run(spec(tmp_path, image_id), lambda _s, _d: None)  # no inputs: no namespace needed
    assert commands.streamed[0][0][0] == "ch-run"


def test_a_runs_dev_shm_is_sized_like_the_hosts(tmp_path: Path) -> None:
    """The host's /dev/shm size; half the memory where there is none; never under the engines' 64 MiB."""
    stat = os.statvfs(SHM)
    assert host_shm_bytes() == max(stat.f_blocks * stat.f_frsize, ENGINE_SHM_BYTES)
    half = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    assert host_shm_bytes(tmp_path / "absent") == max(half, ENGINE_SHM_BYTES)
    mountpoint = tmp_path / "shm"
    mountpoint.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mountpoint)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        assert host_shm_bytes(mountpoint) == 96 * 1024 * 1024
        subprocess.run(["mount", "-o", "remount,size=1m", str(mountpoint)], check=True)
        assert host_shm_bytes(mountpoint) == ENGINE_SHM_BYTES, "a smaller host /dev/shm never shrinks the engine's"
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
