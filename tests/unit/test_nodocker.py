"""Nodes without Docker: Podman pulls a pushed image by digest, Charliecloud fetches its blobs over the registry API
and checks every digest; the engine is never asked when the image was pushed, and a node with neither the image nor
the registry fails at once with one line (exit 15)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from envlock.engine.charliecloud import CharliecloudLauncher
from envlock.engine.podman import PodmanLauncher
from envlock.engine.runtimes import Done, OwnImages
from envlock.errors import EXIT_CODES, EngineError, EngineUnreachableError, RegistryError, RestoreError
from envlock.image.registry import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Blob,
    PlatformManifest,
    Registry,
    fetch_pushed,
    insecure_registries,
    push,
    push_index,
)
from envlock.image.restore import Restored, restore_for_runtime
from envlock.lock.targets import host_platform
from envlock.run.records import RunStore
from tests.fakes import FakeEngine, FakeLauncher, FakeRegistry
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World
from tests.unit.test_runtimes import LOWER, UPPER, Commands

HOST = "registry.example:5000"
LABELS = {"dev.envlock.lock-hash": "f" * 64}


def config_for(layers: Sequence[bytes]) -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]
    document = {"architecture": "amd64", "os": "linux", "config": {"Env": ["LANG=C.UTF-8"], "Labels": LABELS},
                "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
    return json.dumps(document, sort_keys=True).encode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pushed_image(registry: FakeRegistry, layers: Sequence[bytes] = (LOWER, UPPER)) -> tuple[str, str]:
    """Push an image as envlock does (uncompressed layers); returns (image ID, host/repo@digest)."""
    config = config_for(layers)
    ref = push(registry, "team/demo", "v1", config, [Blob(sha(data), len(data), data=data) for data in layers])
    return sha(config), f"{HOST}/{ref}"


def no_engine() -> Restored:
    raise AssertionError("the Docker engine was asked")


def charliecloud(tmp_path: Path, registry: Registry) -> CharliecloudLauncher:
    def no_export(_ref: str, _out: Path) -> None:
        raise AssertionError("the Docker engine was asked for an export")

    commands = Commands()
    return CharliecloudLauncher(
        tmp_path / "ch",
        no_export,
        fetch=partial(fetch_pushed, lambda _host: registry),
        command=commands.command,
        stream=commands.stream,
    )


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_charliecloud_fetches_a_pushed_image_by_digest_verified_without_the_engine(tmp_path: Path) -> None:
    registry = FakeRegistry()
    image_id, pushed = pushed_image(registry)
    launcher = charliecloud(tmp_path, registry)
    assert isinstance(launcher, OwnImages)
    said: list[str] = []
    restored = restore_for_runtime(
        image_id, runtime=launcher, repo_digests=(pushed,), through_engine=no_engine, report=said.append
    )
    assert restored == Restored(image_id, f"registry {pushed}") and said == [f"charliecloud: fetching {pushed}"]
    directory = launcher.directory(image_id)
    assert tree(directory / "rootfs") == ["app", "etc", "etc/kept", "opt", "opt/new", "work"], "whiteouts applied"
    assert (directory / "rootfs" / "app").read_bytes() == b"upper"
    assert json.loads((directory / "config.json").read_text())["config"]["Env"] == ["LANG=C.UTF-8"]
    assert launcher.labels(image_id) == LABELS, "the lock it was built from, as the run checks it"
    assert [p.name for p in (tmp_path / "ch").iterdir()] == [image_id[7:]], "no scratch folder left behind"
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "rootfs"], "no layer file kept"
    again = restore_for_runtime(image_id, runtime=launcher, repo_digests=(pushed,), through_engine=no_engine)
    assert again == Restored(image_id, "charliecloud's store")


def test_charliecloud_takes_the_platform_of_an_index_and_gzip_layers_checked_against_diff_ids(
    tmp_path: Path,
) -> None:
    registry = FakeRegistry()
    config = config_for([LOWER, UPPER])
    gzipped = [gzip.compress(data, mtime=0) for data in (LOWER, UPPER)]
    for data in (config, *gzipped):
        registry.put_blob("team/demo", Blob(sha(data), len(data), data=data))
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(d), "size": len(d)}
              for d in gzipped]  # fmt: skip
    described = {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)}
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": layers, "config": described}
    manifest = json.dumps(document).encode()
    digest = registry.put_manifest("team/demo", "docker-pushed", manifest)
    index = push_index(registry, "team/demo", "multi", [PlatformManifest("linux/amd64", digest, len(manifest))])
    launcher = charliecloud(tmp_path, registry)
    restored = restore_for_runtime(
        sha(config), runtime=launcher, repo_digests=(f"{HOST}/{index}",), through_engine=no_engine
    )
    assert restored.source == f"registry {HOST}/{index}"
    assert (launcher.directory(sha(config)) / "rootfs" / "app").read_bytes() == b"upper"


def test_a_tampered_blob_or_a_layer_that_is_not_its_diff_id_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    registry = FakeRegistry()
    image_id, pushed = pushed_image(registry)
    upper = sha(UPPER)
    registry.blobs[("team/demo", upper)] = UPPER + b"x"  # the registry's disk was altered
    launcher = charliecloud(tmp_path, registry)
    with pytest.raises(RestoreError) as refused:
        restore_for_runtime(image_id, runtime=launcher, repo_digests=(pushed,), through_engine=no_engine)
    assert refused.value.message == (
        f"could not restore image {image_id[:19]} for charliecloud: this node does not hold it and cannot get it "
        f"from the registry (the registry {HOST} gave a blob that is not {upper[:19]}: refused)"
    )
    assert EXIT_CODES[refused.value.exit_code].startswith("the image could not be restored")
    assert refused.value.exit_code == 15
    assert not launcher.has_image(image_id) and tree(tmp_path / "ch") == [], "no half-made directory"
    # A consistent registry whose gzip layer does not decompress to the config's diff_id: refused before unpacking.
    registry = FakeRegistry()
    config = config_for([LOWER])
    wrong = gzip.compress(UPPER, mtime=0)
    for data in (config, wrong):
        registry.put_blob("team/demo", Blob(sha(data), len(data), data=data))
    docker_gzip = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha(wrong)}
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": sha(config)}, "layers": [docker_gzip]}).encode()
    digest = registry.put_manifest("team/demo", "bad", manifest)
    launcher = charliecloud(tmp_path / "second", registry)
    with pytest.raises(
        RestoreError, match=f"the fetched image {sha(config)[:19]} is corrupt or tampered: layer 0 is not "
    ):
        restore_for_runtime(
            sha(config), runtime=launcher, repo_digests=(f"{HOST}/team/demo@{digest}",), through_engine=no_engine
        )
    assert not launcher.has_image(sha(config))


def test_a_digest_that_names_another_image_is_refused(tmp_path: Path) -> None:
    registry = FakeRegistry()
    _, pushed = pushed_image(registry)
    wanted = "sha256:" + "c" * 64
    with pytest.raises(RestoreError, match=r"is image sha256:[0-9a-f]{12}, not sha256:cccccccccccc"):
        restore_for_runtime(
            wanted, runtime=charliecloud(tmp_path, registry), repo_digests=(pushed,), through_engine=no_engine
        )


class Unreachable(FakeRegistry):
    """A registry the node cannot reach (a firewall, no route)."""

    def manifest(self, repository: str, reference: str) -> bytes | None:
        raise RegistryError(f"cannot reach the registry {self.host}: ConnectionError")


def test_a_node_without_the_image_or_the_registry_fails_with_one_line_naming_both(tmp_path: Path) -> None:
    registry = Unreachable()
    image_id, pushed = pushed_image(registry)
    with pytest.raises(RestoreError) as refused:
        restore_for_runtime(
            image_id, runtime=charliecloud(tmp_path, registry), repo_digests=(pushed,), through_engine=no_engine
        )
    assert refused.value.message == (
        f"could not restore image {image_id[:19]} for charliecloud: this node does not hold it and cannot get it "
        f"from the registry (cannot reach the registry {HOST}: ConnectionError)"
    )
    assert "ENVLOCK_INSECURE_REGISTRIES" in refused.value.hint and "\n" not in refused.value.message


def test_an_image_never_pushed_goes_through_the_engine_and_a_node_without_one_says_so(tmp_path: Path) -> None:
    registry = FakeRegistry()
    image_id, _ = pushed_image(registry)
    launcher = charliecloud(tmp_path, registry)
    from_engine = Restored(image_id, "engine")
    assert restore_for_runtime(image_id, runtime=launcher, repo_digests=(), through_engine=lambda: from_engine) == (
        from_engine
    )

    def engine_down() -> Restored:
        raise EngineError("cannot inspect the image: the Docker engine is not reachable")

    with pytest.raises(RestoreError) as refused:
        restore_for_runtime(image_id, runtime=launcher, repo_digests=(), through_engine=engine_down)
    assert refused.value.message == (
        f"could not restore image {image_id[:19]} for charliecloud: this node does not hold it, it was never pushed "
        "to a registry, and there is no Docker engine to take it from (cannot inspect the image: the Docker engine "
        "is not reachable)"
    )
    assert refused.value.exit_code == 15 and "envlock build --push" in refused.value.hint


class PodmanCommands(Commands):
    """podman with a registry behind it: `pull` of a digest stores the image under `gives`."""

    def __init__(self, gives: str, fails: str = "") -> None:
        super().__init__()
        self.gives = gives
        self.fails = fails
        self.held: set[str] = set()
        self.labels: object = LABELS

    def command(self, args: Sequence[str]) -> Done:
        self.ran.append(list(args))
        if args[:2] == ["podman", "pull"]:
            if self.fails:
                return Done(125, "", f"Error: initializing source docker://{args[-1]}: {self.fails}")
            self.held.add(self.gives)
            return Done(0, f"{self.gives}\n", "")
        if args[:3] == ["podman", "image", "inspect"]:
            hex_id = args[-1]
            if hex_id not in self.held:
                return Done(125, "", "Error: no such image")
            return Done(0, f"{json.dumps(self.labels)}\n" if "{{json .Labels}}" in args else f"sha256:{hex_id}\n", "")
        return Done(0, "", "")


def test_podman_pulls_by_digest_tls_verified_unless_the_site_lists_the_registry(tmp_path: Path) -> None:
    image_id = "sha256:" + "a" * 64
    pushed = f"{HOST}/team/demo@sha256:" + "d" * 64
    for insecure, tls in ((frozenset(), []), (insecure_registries({"ENVLOCK_INSECURE_REGISTRIES": f"x:1, {HOST}"}),
                                               ["--tls-verify=false"])):  # fmt: skip
        commands = PodmanCommands(gives="a" * 64)
        launcher = PodmanLauncher(no_export_podman, tmp_path, insecure=insecure, command=commands.command)
        restored = restore_for_runtime(image_id, runtime=launcher, repo_digests=(pushed,), through_engine=no_engine)
        assert restored == Restored(image_id, f"registry {pushed}")
        assert ["podman", "pull", "--quiet", *tls, pushed] in commands.ran
        launcher.prepare(image_id)  # held now: no export, no second pull
        assert sum(args[:2] == ["podman", "pull"] for args in commands.ran) == 1
    assert insecure_registries({}) == frozenset()


def no_export_podman(_ref: str, _out: Path) -> None:
    raise AssertionError("the Docker engine was asked for an export")


def test_podman_gives_the_labels_of_the_image_it_holds_and_one_line_otherwise(tmp_path: Path) -> None:
    commands = PodmanCommands(gives="a" * 64)
    launcher = PodmanLauncher(no_export_podman, tmp_path, command=commands.command)
    launcher.pull("sha256:" + "a" * 64, f"{HOST}/team/demo@sha256:" + "d" * 64)
    assert launcher.labels("sha256:" + "a" * 64) == LABELS
    commands.labels = None  # an image without labels: `{{json .Labels}}` says null
    assert launcher.labels("sha256:" + "a" * 64) == {}
    with pytest.raises(EngineError) as missing:
        launcher.labels("sha256:" + "b" * 64)
    assert missing.value.message == "podman could not inspect sha256:bbbbbbbbbbbb: Error: no such image"


def test_podman_refuses_a_pull_that_gives_another_image_and_names_a_failed_one(tmp_path: Path) -> None:
    image_id = "sha256:" + "a" * 64
    pushed = f"{HOST}/team/demo@sha256:" + "d" * 64
    commands = PodmanCommands(gives="b" * 64)
    launcher = PodmanLauncher(no_export_podman, tmp_path, command=commands.command)
    with pytest.raises(RestoreError, match=f"podman pulled {pushed} but it is not sha256:aaaaaaaaaaaa"):
        restore_for_runtime(image_id, runtime=launcher, repo_digests=(pushed,), through_engine=no_engine)
    assert ["podman", "rmi", "--force", pushed] in commands.ran, "the wrong image is not left behind"
    failing = PodmanCommands(gives="a" * 64, fails="pinging container registry: connection refused")
    launcher = PodmanLauncher(no_export_podman, tmp_path, command=failing.command)
    with pytest.raises(RestoreError) as refused:
        restore_for_runtime(image_id, runtime=launcher, repo_digests=(pushed,), through_engine=no_engine)
    assert refused.value.message == (
        "could not restore image sha256:aaaaaaaaaaaa for podman: this node does not hold it and cannot get it from "
        f"the registry (podman could not pull {pushed}: Error: initializing source docker://{pushed}: pinging "
        "container registry: connection refused)"
    )


world = test_cli_commands.world


def test_slurms_own_job_output_written_after_the_attestation_does_not_break_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, said = world(capsys, "run", "-C", str(world.project), "--", "python", "t.py")
    assert code == 0, said
    record = RunStore(world.project).all()[-1]
    run_dir = RunStore(world.project).directory(record.run_id)
    (run_dir / "slurm-42.out").write_text("envlock's task says things\n")
    world.wiring.attest_run(run_dir, None)  # as the node's task attests before its last lines reach the file
    with (run_dir / "slurm-42.out").open("a") as slurm_out:
        slurm_out.write(f"run {record.run_id} (node rank 0): finished (exit 0)\nattestation …\n")
    code, out, err = world(capsys, "verify", record.run_id, "-C", str(world.project), "--allow-unsigned")
    assert code == 0, out + err
    with (run_dir / "log.txt").open("a") as log:  # the run's own log stays bound
        log.write("edited\n")
    code, out, _ = world(capsys, "verify", record.run_id, "-C", str(world.project), "--allow-unsigned")
    assert code == 26 and "MISMATCH run file log.txt" in out


class NoDocker(FakeEngine):
    """DOCKER_HOST pointing at a socket that does not exist: the adapter's first request fails."""

    def image_id(self, ref: str) -> str | None:
        raise EngineUnreachableError(f"cannot inspect {ref}: the Docker engine is not reachable (ConnectionError)")


@dataclass
class StoreLauncher(FakeLauncher):
    """Podman as the run core sees it: a store of its own, filled from the registry by digest."""

    name: str = "podman"
    held: set[str] = field(default_factory=set)
    pulled: list[str] = field(default_factory=list)
    source: FakeEngine = field(default_factory=FakeEngine)  # where the registry's images were built
    forged: dict[str, str] | None = None  # the labels of what the registry gives instead, when set

    def has_image(self, image_id: str) -> bool:
        return image_id in self.held

    def pull(self, image_id: str, pushed: str) -> None:
        self.pulled.append(pushed)
        self.held.add(image_id)

    def labels(self, image_id: str) -> dict[str, str]:
        return dict(self.source.image_labels(image_id) if self.forged is None else self.forged)


def test_run_under_a_runtime_of_its_own_needs_no_docker_for_a_pushed_image(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, said = world(capsys, "build", "-C", str(world.project), "--registry", "127.0.0.1:5000/team")
    assert code == 0, said
    pushed = next(line.split()[1] for line in out.splitlines() if line.startswith("pushed 127.0.0.1:5000/team/"))
    image_id = next(iter(json.loads((world.project / ".envlock" / "images.json").read_text()).values()))["image-id"]
    launcher = StoreLauncher(runtime_name="podman", source=world.engine)
    world.wiring.engine_, world.wiring.launcher_ = NoDocker(), launcher
    code, _, said = world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "python", "t.py")
    assert code == 0, said
    assert launcher.pulled == [pushed] and [spec.image_id for spec in launcher.launched] == [image_id]
    record = RunStore(world.project).all()[-1]
    assert record.image_id == image_id and record.repo_digests == [pushed] and record.runtime is not None
    assert f"image {image_id[:19]} from registry {pushed} (the Docker engine is not reachable)" in said
    launcher.pulled.clear()
    assert world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")[0] == 0
    assert launcher.pulled == [], "held now: taken from the runtime's store"


def test_run_under_a_runtime_of_its_own_without_docker_or_a_pushed_image_fails_in_one_line(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = StoreLauncher(runtime_name="podman")
    world.wiring.engine_, world.wiring.launcher_ = NoDocker(), launcher
    code, _, err = world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")
    assert code == 125 and RunStore(world.project).all() == [], err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "no image of lock" in errors[0] and f"for {host_platform()} is recorded" in errors[0], err
    assert "the Docker engine is not reachable" in errors[0], err
    assert "(elsewhere 15: the image could not be restored" in err and "envlock build --push" in err, err
    world.wiring.engine_ = world.engine
    assert world(capsys, "build", "-C", str(world.project))[0] == 0, "built, never pushed"
    world.wiring.engine_ = NoDocker()
    code, _, err = world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 125 and len(errors) == 1 and "it was never pushed to a registry" in errors[0], err
    assert launcher.launched == [] and launcher.pulled == []
    images = world.project / ".envlock" / "images.json"
    known = json.loads(images.read_text())
    other = "linux/arm64" if host_platform() != "linux/arm64" else "linux/amd64"
    for entry in known.values():  # built for another platform only (by a build elsewhere): not this host's to run
        entry["platforms"] = {other: entry["platforms"][host_platform()]}
    images.write_text(json.dumps(known))
    code, _, err = world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")
    assert code == 125 and "no image of lock" in err and f"for {host_platform()} is recorded" in err, err
    assert launcher.launched == [] and launcher.pulled == []


def test_run_without_docker_refuses_an_image_images_json_names_for_a_lock_it_was_not_built_from(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, said = world(capsys, "build", "-C", str(world.project), "--registry", "127.0.0.1:5000/team")
    assert code == 0, said
    images = world.project / ".envlock" / "images.json"
    ((lock_hash, entry),) = json.loads(images.read_text()).items()
    labels = world.engine.image_labels(entry["image-id"])
    assert labels["dev.envlock.lock-hash"] == lock_hash
    # The image the record names was built from another lock (another project's record copied in, say).
    other = lock_hash[:-4] + "beef"
    launcher = StoreLauncher(
        runtime_name="podman", source=world.engine, forged={**labels, "dev.envlock.lock-hash": other}
    )
    world.wiring.engine_, world.wiring.launcher_ = NoDocker(), launcher
    code, _, err = world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 125 and len(errors) == 1 and "Traceback" not in err, err
    assert f"was built from lock {other[:12]}: refusing to run it" in errors[0], err
    assert "(elsewhere 15" in err and "envlock build --push" in err, err
    assert launcher.launched == [] and RunStore(world.project).all() == []
    launcher.forged = {}
    code, _, err = world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")
    assert code == 125 and "was built from no envlock lock" in err and launcher.launched == [], err
