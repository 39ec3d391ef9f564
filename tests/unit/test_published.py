"""Runs in the registry through the fakes: push (the artifact's layout, subject and listing in the fallback index),
runs --registry, pull, reproduce REGISTRY/REPO@sha256:… elsewhere; crafted and mismatched referrers refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from envlock.evidence.bundle import unpacked
from envlock.evidence.published import (
    BUNDLE_TYPE,
    RECORD_TYPE,
    RUN_TYPE,
    fetch_run,
    location_of,
    publish_run,
    verify_fetched,
)
from envlock.evidence.trust import load_trust
from envlock.image.referrers import DSSE_TYPE, SBOM_TYPE, Layer, fallback_tag, push_artifact
from envlock.image.registry import OCI_INDEX, OCI_MANIFEST, Blob, push
from envlock.paths import CacheLayout
from envlock.run.records import RunStore
from envlock.signing import generate_key
from tests.fakes import FakeRegistry
from tests.unit import test_cli_commands
from tests.unit.test_audit import _git_init
from tests.unit.test_cli_commands import World

world = test_cli_commands.world
REPO = "team/demo"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _published_run(world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, str, str]:
    """A signed run of an image pushed to the fake registry, then `envlock push`: (run id, ref, image digest)."""
    generate_key(tmp_path / "keys" / "signing.pem")
    _git_init(world.project)
    code, out, err = world(capsys, "build", "-C", str(world.project), "--registry", f"{world.registry.host}/team")
    assert code == 0, err
    image = out.split("pushed ")[1].split()[0].partition("@")[2]
    world.engine.registries[world.registry.host] = world.registry
    key = str(tmp_path / "keys" / "signing.pem")
    code, _, err = world(capsys, "run", "-C", str(world.project), "--key", key, "-o", "out/metrics.json", "--", "t")
    assert code == 0, err
    run_id = RunStore(world.project).all()[-1].run_id
    code, out, err = world(capsys, "push", run_id, "-C", str(world.project))
    assert code == 0, err
    ref = out.strip().rsplit(": ", 1)[1]
    assert out.startswith(f"pushed run {run_id} (") and f"as a referrer of {image}" in out
    return run_id, ref, image


def test_push_lists_the_run_among_the_images_referrers_and_reproduces_elsewhere(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, ref, image = _published_run(world, capsys, tmp_path)
    assert ref.startswith(f"{world.registry.host}/{REPO}@sha256:")
    index = json.loads(world.registry.manifests[(REPO, fallback_tag(image))])
    assert index["mediaType"] == OCI_INDEX
    assert sorted(d["artifactType"] for d in index["manifests"]) == sorted([SBOM_TYPE, DSSE_TYPE, RUN_TYPE])
    artifact = json.loads(world.registry.manifests[(REPO, ref.partition("@")[2])])
    assert artifact["artifactType"] == RUN_TYPE and artifact["subject"]["digest"] == image
    assert [x["mediaType"] for x in artifact["layers"]] == [RECORD_TYPE, DSSE_TYPE, BUNDLE_TYPE]
    assert artifact["annotations"]["dev.envlock.run.id"] == run_id

    listing = ("runs", "--registry", f"{world.registry.host}/{REPO}")
    code, out, _ = world(capsys, *listing)
    assert code == 0 and out.startswith(run_id) and ref in out and "finished" in out
    lock_hash = RunStore(world.project).load(run_id).lock_hash
    code, out, _ = world(capsys, *listing, "--lock", lock_hash[7:19])
    assert code == 0 and ref in out
    code, out, _ = world(capsys, *listing, "--image", image, "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [run_id]
    code, out, _ = world(capsys, *listing, "--lock", "0" * 12)
    assert code == 0 and out == f"no runs published in {world.registry.host}/{REPO} for that lock\n"

    # Elsewhere: an empty folder, the image gone from the engine; only the reference and the signer's public key.
    world.engine.remove(RunStore(world.project).load(run_id).image_id)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = world(capsys, "reproduce", ref, "-C", str(elsewhere))
    assert code == 30 and "error: UNTRUSTED KEY" in err, err
    assert list(elsewhere.iterdir()) == [], "refused before anything is rebuilt"
    assert world.engine.pulls == [], "nor the image pulled"
    pub = str(tmp_path / "keys" / "signing.pem.pub")
    code, out, err = world(capsys, "reproduce", ref, "-C", str(elsewhere), "--key", pub)
    assert code == 0 and "REPRODUCED" in out, out + err
    assert "VERIFIED: signed by signing.pem" in err
    assert f"pulled from {world.registry.host}/{REPO}@{image}" in err
    assert [p.name for p in elsewhere.iterdir()] == [f"envlock-reproduction-{run_id}"]

    # pull: into another project's run store, verified first; a second pull is refused.
    other = tmp_path / "other"
    other.mkdir()
    code, out, err = world(capsys, "pull", ref, "-C", str(other), "--key", pub)
    assert code == 0 and out.startswith("VERIFIED: signed by signing.pem") and f"pulled run {run_id}" in out, err
    assert RunStore(other).load(run_id).status == "finished"
    assert (other / ".envlock" / "pulled" / f"{run_id}.tar").is_file()
    code, out, err = world(capsys, "verify", str(other / ".envlock" / "pulled" / f"{run_id}.tar"), "--key", pub)
    assert code == 0 and "VERIFIED" in out, out + err
    code, _, err = world(capsys, "pull", ref, "-C", str(other), "--key", pub)
    assert code == 2 and f"error: run {run_id} is already in this project's run store" in err
    # The image's digest stands for its one run; with a second run there, it names how to choose.
    third = tmp_path / "third"
    code, out, err = world(capsys, "pull", f"{world.registry.host}/{REPO}@{image}", "-C", str(third), "--key", pub)
    assert code == 0 and f"pulled run {run_id}" in out, err
    world.engine.registries[world.registry.host] = world.registry
    code, out, err = world(capsys, "run", "-C", str(world.project), "--push", "-o", "out/metrics.json", "--", "t")
    assert code == 0 and "pushed run" in out, err
    code, _, err = world(capsys, "pull", f"{world.registry.host}/{REPO}@{image}", "-C", str(third))
    assert code == 2 and f"error: 2 runs are published for the image {image[:19]}: name one by its own digest" in err


def test_push_of_a_run_whose_image_was_never_pushed_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "t")
    assert code == 0, err
    run_id = RunStore(world.project).all()[-1].run_id
    code, _, err = world(capsys, "push", run_id, "-C", str(world.project))
    assert code == 11 and "error: the run's image was never pushed" in err and "hint: envlock build --push" in err
    assert world.registry.manifests == {} and world.registry.blobs == {}


def test_a_crafted_referrer_is_left_out_and_a_run_moved_onto_another_image_fails(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, ref, image = _published_run(world, capsys, tmp_path)
    registry = world.registry
    genuine = json.loads(registry.manifests[(REPO, ref.partition("@")[2])])
    # Another image in the same repository, and the genuine run's layers published as if about it.
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    other_image = push(registry, REPO, "other", config, []).partition("@")[2]
    layers = [
        Layer(x["mediaType"], Blob(x["digest"], x["size"], data=registry.blobs[(REPO, x["digest"])]))
        for x in genuine["layers"]
    ]
    moved = push_artifact(registry, REPO, other_image, RUN_TYPE, layers, annotations=genuine["annotations"])
    # A crafted index entry: listed under the image, but the manifest refers to the other image.
    tag = fallback_tag(image)
    index = json.loads(registry.manifests[(REPO, tag)])
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": moved, "size": 1, "artifactType": RUN_TYPE})
    registry.put_manifest(REPO, tag, json.dumps(index).encode(), OCI_INDEX)

    code, out, err = world(capsys, "runs", "--registry", f"{registry.host}/{REPO}", "--image", image)
    assert code == 0 and out.count(run_id) == 1 and ref in out and moved not in out
    assert f"refused: the referrer {moved[:19]} does not refer to {image[:19]}" in err

    pub = str(tmp_path / "keys" / "signing.pem.pub")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = world(capsys, "reproduce", f"{registry.host}/{REPO}@{moved}", "-C", str(elsewhere), "--key", pub)
    assert code == 26 and "error: VERIFICATION FAILED: 1 mismatch(es): the image the registry artifact" in err, err
    assert list(elsewhere.iterdir()) == []

    # A registry that hands back other bytes for the bundle: refused by digest before anything is unpacked.
    bundle = next(x["digest"] for x in genuine["layers"] if x["mediaType"] == BUNDLE_TYPE)
    data = bytearray(registry.blobs[(REPO, bundle)])
    data[len(data) // 3] ^= 0x01
    registry.blobs[(REPO, bundle)] = bytes(data)
    code, _, err = world(capsys, "pull", ref, "-C", str(elsewhere), "--key", pub)
    assert code == 11 and f"error: refused: the layer {bundle[:19]}" not in err
    assert f"error: the registry {registry.host} gave a blob that is not {bundle[:19]}: refused" in err
    assert list(elsewhere.iterdir()) == [] and _scratch_left(tmp_path) == [], "no partial file left behind"


def test_outputs_over_the_cap_are_published_by_digest_and_left_unchecked(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, _, _ = _published_run(world, capsys, tmp_path)
    registry = world.registry
    engine = world.engine
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    published = publish_run(
        world.project, run_id, registry=lambda _h: registry, engine=lambda: engine, scratch=scratch, max_output_bytes=1
    )
    assert published.left_out == ("out/metrics.json",)
    fetched = fetch_run(registry, published.ref, tmp_path)
    trust = load_trust([tmp_path / "keys" / "signing.pem.pub"], environ={}, project_dir=None)
    with unpacked(fetched.bundle) as found:
        assert "outputs/out/metrics.json" not in found.manifest["contents"]
        checks = verify_fetched(found, fetched, trust, lambda: None)
    assert checks.mismatches == [] and checks.origin.state == "trusted"
    assert "output out/metrics.json: published by digest only (too large to carry)" in checks.unchecked


class RacingRegistry(FakeRegistry):
    """A registry where another writer's fallback index lands just after each of ours, the first `races` times
    (what distribution 2.8 allows: no conditional PUT of a tag)."""

    races: int = 2

    def put_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST) -> str:
        digest = super().put_manifest(repository, reference, manifest, media_type)
        if reference.startswith("sha256-") and self.races:
            self.races -= 1
            empty = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            super().put_manifest(repository, reference, json.dumps(empty).encode(), OCI_INDEX)
        return digest


def test_the_fallback_index_is_read_back_and_merged_again_when_a_parallel_writer_wins() -> None:
    registry = RacingRegistry()
    config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    image = push(registry, REPO, "x", config, []).partition("@")[2]
    document = b'{"a":1}'
    layer = Layer(RECORD_TYPE, Blob(_sha256(document), len(document), data=document))
    digest = push_artifact(registry, REPO, image, RUN_TYPE, [layer], annotations={})
    listed = json.loads(registry.manifests[(REPO, fallback_tag(image))])["manifests"]
    assert [d["digest"] for d in listed] == [digest] and registry.races == 0


def test_bad_references_are_usage_errors(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = world(capsys, "pull", "registry.example:5000/team/demo@sha256:abc")
    assert code == 2 and err.splitlines() == [
        "error: 'registry.example:5000/team/demo@sha256:abc' is not a registry digest",
        "hint: pass REGISTRY/REPO@sha256:…",
    ]
    code, _, err = world(capsys, "runs", "--image", "sha256:" + "a" * 64)
    assert code == 2 and "error: --image and --lock are for --registry" in err
    assert location_of("registry.example:5000/team/demo").repository == "team/demo"
    shutil.rmtree(world.project / ".envlock", ignore_errors=True)


def _scratch_left(tmp_path: Path) -> list[Path]:
    """What pulls left in envlock's scratch (the world's cache): nothing, once each pull has ended."""
    scratch = CacheLayout(tmp_path / "cache").scratch
    return sorted(scratch.rglob("*")) if scratch.is_dir() else []


def test_a_pulled_bundle_over_the_cap_is_refused_before_a_byte_and_the_cap_can_be_raised(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, ref, _ = _published_run(world, capsys, tmp_path)
    artifact = json.loads(world.registry.manifests[(REPO, ref.partition("@")[2])])
    bundle = next(x for x in artifact["layers"] if x["mediaType"] == BUNDLE_TYPE)
    pub = str(tmp_path / "keys" / "signing.pem.pub")
    elsewhere = tmp_path / "elsewhere"
    world.wiring.environ = {"ENVLOCK_PULL_MAX_BYTES": str(bundle["size"] - 1)}
    world.registry.wire[(REPO, bundle["digest"])] = lambda: pytest.fail("a byte was asked for")
    code, _, err = world(capsys, "pull", ref, "-C", str(elsewhere), "--key", pub)
    assert code == 31, err
    assert err.splitlines()[:2] == [
        f"error: refused: the run's bundle {bundle['digest'][:19]} is {bundle['size']} bytes, over the pull cap of "
        f"{bundle['size'] - 1} bytes",
        "hint: if you trust its source and have the space, raise the cap: ENVLOCK_PULL_MAX_BYTES=… (K/M/G/T "
        "suffixes are powers of 1024; default 4G)",
    ]
    assert not elsewhere.exists() and _scratch_left(tmp_path) == []
    del world.registry.wire[(REPO, bundle["digest"])]
    world.wiring.environ = {"ENVLOCK_PULL_MAX_BYTES": str(bundle["size"])}  # exactly its size: taken
    code, out, err = world(capsys, "pull", ref, "-C", str(elsewhere), "--key", pub)
    assert code == 0 and "pulled run" in out, err
    world.wiring.environ = {"ENVLOCK_PULL_MAX_BYTES": "lots"}
    code, _, err = world(capsys, "pull", ref, "-C", str(tmp_path / "third"), "--key", pub)
    assert code == 2 and "error: ENVLOCK_PULL_MAX_BYTES='lots' is not a positive whole number" in err


def test_a_bundle_that_never_ends_is_cut_off_at_its_declared_size_and_leaves_nothing(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A hostile registry streams a bundle blob without end: the pull reads it in chunks into its scratch, stops
    just past the size the manifest declares, and removes what it had written (never the whole in memory)."""
    _, ref, _ = _published_run(world, capsys, tmp_path)
    artifact = json.loads(world.registry.manifests[(REPO, ref.partition("@")[2])])
    bundle = next(x for x in artifact["layers"] if x["mediaType"] == BUNDLE_TYPE)
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            sent.append(1 << 16)
            yield b"\0" * (1 << 16)

    world.registry.wire[(REPO, bundle["digest"])] = endless
    elsewhere = tmp_path / "elsewhere"
    code, _, err = world(capsys, "pull", ref, "-C", str(elsewhere), "--key", str(tmp_path / "keys" / "signing.pem.pub"))
    assert code == 11, err
    assert (
        f"error: refused: the registry {world.registry.host} sent more than the {bundle['size']} bytes declared for "
        f"{bundle['digest'][:19]}" in err
    )
    assert sum(sent) <= bundle["size"] + (1 << 16), "cut off at the declared size, not read on"
    assert not elsewhere.exists() and _scratch_left(tmp_path) == []
