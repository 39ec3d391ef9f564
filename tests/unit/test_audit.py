"""The audit trail through the fakes: SBOM, keys, attestations and verify, referrers, bundles, report."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from securesystemslib.dsse import Envelope
from securesystemslib.signer._key import SSlibKey

from envlock.errors import VerificationError
from envlock.evidence.attest import RUN_PREDICATE
from envlock.evidence.runreport import render_html
from envlock.image.provenance import SLSA_PROVENANCE, check_pulled
from envlock.image.referrers import DSSE_TYPE, SBOM_TYPE, fallback_tag, retrieve
from envlock.image.sbom import SBOM_PATH, sbom_json
from envlock.lock import lockfile
from envlock.run.records import RunStore
from envlock.signing import PublicKey, envelope, generate_key, open_envelope
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World

world = test_cli_commands.world  # the same locked project and fakes as the other commands' tests
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _git_init(project: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)

    git("init", "-q")
    (project / ".gitignore").write_text(".envlock/\nout/\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "code")


def _independent_verify(document: dict[str, object], public_pem: bytes) -> dict[str, object]:
    """securesystemslib's DSSE implementation, not envlock's: the envelope verifies with the public key alone."""
    public = serialization.load_pem_public_key(public_pem)
    keyid = PublicKey(public_pem).keyid
    key = SSlibKey.from_crypto(public, keyid=keyid)
    verified = Envelope.from_dict(document).verify([key], 1)
    assert list(verified) == [keyid]
    statement: dict[str, object] = json.loads(base64.b64decode(str(document["payload"])))
    return statement


# --- SBOM --------------------------------------------------------------------------------------------------------


def test_sbom_of_the_torch_lock_is_valid_cyclonedx_and_lists_every_part() -> None:
    lock = lockfile.read(EXAMPLES / "torch-gpu" / "envlock.lock")
    text = sbom_json(lock, "linux/amd64")
    assert text == sbom_json(lock, "linux/amd64"), "the same lock gives the same bytes"
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6" and bom["metadata"]["timestamp"].startswith("20")
    purls = {c.get("purl") for c in bom["components"]}
    torch = next(c for c in bom["components"] if c["name"] == "torch")
    assert torch["purl"] == "pkg:pypi/torch@2.5.1" and torch["hashes"][0]["alg"] == "SHA-256"
    target = lock.target("linux/amd64")
    assert len([p for p in purls if p and p.startswith("pkg:pypi/")]) == len(target.packages)
    assert target.base is not None
    debs = {str(PackageURL("deb", "debian", n, v)) for n, v in target.base.debian.items()}
    assert debs and debs <= purls and "pkg:deb/debian/python3@3.11.2-1%2Bb1" in purls
    cuda = {c["name"]: c["version"] for c in bom["components"] if c.get("group") == "nvidia"}
    assert cuda == {"cuda-runtime": "12.4.127", "cudnn": "9.1.0.70", "nccl": "2.21.5", "cublas": "12.4.5.8",
                    "nvidia-driver": ">=550.54.14"}  # fmt: skip
    assert any(c["bom-ref"].startswith("envlock-base:") for c in bom["components"])


def test_sbom_command_and_the_sbom_inside_the_image(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = world(capsys, "sbom", "-C", str(world.project))
    assert code == 0 and json.loads(out)["bomFormat"] == "CycloneDX"
    code, out, _ = world(capsys, "build", "-C", str(world.project))
    image_id = out.strip().rsplit("(", 1)[1].rstrip(")")
    embedded = world.engine.read_file(image_id, "/" + SBOM_PATH).decode()
    assert embedded == sbom_json(lockfile.read(world.spec.lock_path), "linux/amd64")
    assert world.engine.image_labels(image_id)["dev.envlock.sbom"] == "/" + SBOM_PATH
    provenance = world.project / ".envlock" / "attestations" / f"{image_id.removeprefix('sha256:')}.dsse.json"
    statement = open_envelope(json.loads(provenance.read_text()), None).statement
    assert statement["predicateType"] == SLSA_PROVENANCE
    assert statement["subject"][0]["digest"]["sha256"] == image_id.removeprefix("sha256:")
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {d["name"].split("-")[0] for d in deps} == {"alpha", "beta"}


# --- keys, attestations, verify ----------------------------------------------------------------------------------


def test_key_generate_is_private_and_public_prints_pem(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = tmp_path / "keys" / "signing.pem"
    code, out, _ = world(capsys, "key", "generate", "-o", str(key))
    assert code == 0 and stat.S_IMODE(key.stat().st_mode) == 0o600
    code, out, _ = world(capsys, "key", "public", "--key", str(key))
    assert code == 0 and out.startswith("-----BEGIN PUBLIC KEY-----")
    assert (tmp_path / "keys" / "signing.pem.pub").read_text() == out
    code, _, err = world(capsys, "key", "generate", "-o", str(key))
    assert code == 2 and "never overwrites" in err
    key.chmod(0o644)
    code, _, err = world(capsys, "key", "public", "--key", str(key))
    assert code == 2 and "chmod 600" in err


def test_ecdsa_envelopes_verify_independently(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "ec.pem", "ecdsa-p256")
    document = envelope({"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": "x"}, key)
    _independent_verify(document, key.public.pem)


def test_run_attestation_signed_verified_then_a_flipped_byte_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = tmp_path / "signing.pem"
    generate_key(key)
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": str(key)}
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    assert code == 0 and "signed by" in said
    record = RunStore(world.project).all()[-1]
    run_dir = RunStore(world.project).directory(record.run_id)
    document = json.loads((run_dir / "attestation.dsse.json").read_text())
    statement = _independent_verify(document, (tmp_path / "signing.pem.pub").read_bytes())
    assert statement["predicateType"] == RUN_PREDICATE
    predicate = statement["predicate"]
    assert isinstance(predicate, dict)
    signed = predicate["record"]
    assert signed == json.loads((run_dir / "record.json").read_text()), "the whole record is signed"
    assert signed["image_id"] == record.image_id and signed["lock_hash"] == record.lock_hash
    assert signed["outputs"] == record.outputs and signed["exit_code"] == 0 and signed["seed"] == 0
    assert signed["environment"]["PYTHONHASHSEED"] == "0" and "envlock.lock" in predicate["run-files"]

    pub = str(tmp_path / "signing.pem.pub")
    code, out, _ = world(capsys, "verify", record.run_id, "-C", str(world.project), "--key", pub)
    assert code == 0 and "VERIFIED: signed by signing.pem (key" in out and "ok output out/metrics.json" in out, out
    metrics = world.project / "out" / "metrics.json"
    data = bytearray(metrics.read_bytes())
    data[3] ^= 0x01
    metrics.write_bytes(bytes(data))
    code, out, err = world(capsys, "verify", record.run_id, "-C", str(world.project), "--key", pub)
    assert code == 26 and "MISMATCH output out/metrics.json" in out and "output out/metrics.json" in err

    other = generate_key(tmp_path / "other.pem")
    metrics.write_bytes(bytes(data[:3]) + bytes([data[3] ^ 0x01]) + bytes(data[4:]))
    code, _, err = world(
        capsys, "verify", record.run_id, "-C", str(world.project), "--key", str(tmp_path / "other.pem.pub")
    )
    signer = PublicKey((tmp_path / "signing.pem.pub").read_bytes()).keyid
    assert code == 30 and f"UNTRUSTED KEY {signer[:16]}" in err and other.public.keyid[:16] not in err, err


def test_unsigned_attestation_without_a_key(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    assert code == 0 and "unsigned" in said
    record = RunStore(world.project).all()[-1]
    document = json.loads((RunStore(world.project).directory(record.run_id) / "attestation.dsse.json").read_text())
    assert document["signatures"] == []
    code, out, err = world(capsys, "verify", record.run_id, "-C", str(world.project))
    assert code == 29 and "error: UNSIGNED: no signature" in err and "VERIFIED" not in out
    code, out, _ = world(capsys, "verify", record.run_id, "-C", str(world.project), "--allow-unsigned")
    assert code == 0 and "HASHES HOLD, ORIGIN NOT VERIFIED: unsigned" in out
    lock_copy = RunStore(world.project).directory(record.run_id) / "envlock.lock"
    lock_copy.write_text(lock_copy.read_text() + "\n# edited\n")
    code, out, _ = world(capsys, "verify", record.run_id, "-C", str(world.project), "--allow-unsigned")
    assert code == 26 and "MISMATCH run file envlock.lock" in out


# --- registry referrers ------------------------------------------------------------------------------------------


def test_push_attaches_sbom_and_provenance_and_restore_checks_them(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = world(capsys, "build", "-C", str(world.project), "--registry", "127.0.0.1:5000/team")
    assert code == 0 and "pushed SBOM and provenance as referrers" in out
    pushed = out.split("pushed ")[1].split()[0]
    digest = pushed.partition("@")[2]
    index = json.loads(world.registry.manifests[("team/demo", fallback_tag(digest))])
    assert sorted(d["artifactType"] for d in index["manifests"]) == sorted([SBOM_TYPE, DSSE_TYPE])
    for descriptor in index["manifests"]:
        manifest = json.loads(world.registry.manifests[("team/demo", descriptor["digest"])])
        assert manifest["subject"]["digest"] == digest

    world.engine.registries[world.registry.host] = world.registry
    image_id = out.split("(")[1].split(")")[0]
    world.engine.remove(image_id)
    ref = pushed.replace("127.0.0.1:5000", world.registry.host)
    world.wiring.registry_for = lambda _address: world.registry
    code, out, err = world(capsys, "restore", ref, "-C", str(world.project))
    assert code == 0 and f"provenance subject = manifest {digest[:19]}" in out, err
    assert "SBOM from the registry" in out

    # A provenance about another image is refused, by what it names.
    attestation = retrieve(world.registry, ref.replace(world.registry.host, "127.0.0.1:5000")).attestation
    assert attestation is not None
    with pytest.raises(VerificationError, match="is about config"):
        check_pulled(attestation, digest, "sha256:" + "0" * 64, [], required=False)


# --- bundle, reproduce and verify from it; report ----------------------------------------------------------------


def test_bundle_verifies_and_reproduces_alone(world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _git_init(world.project)
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    assert code == 0, said
    record = RunStore(world.project).all()[-1]
    bundle = tmp_path / "run.tar"
    code, out, err = world(capsys, "bundle", record.run_id, "-C", str(world.project), "-o", str(bundle), "--with-image")
    assert code == 0 and "image archive included" in out, err

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(bundle, elsewhere / "run.tar")
    world.engine.remove(record.image_id)
    code, out, err = world(capsys, "verify", str(elsewhere / "run.tar"), "-C", str(elsewhere))
    assert code == 29 and "UNSIGNED" in err, out + err
    code, out, err = world(capsys, "verify", str(elsewhere / "run.tar"), "-C", str(elsewhere), "--allow-unsigned")
    assert code == 0 and "HASHES HOLD" in out and "ok code.gitbundle: the signed commit" in out, out + err
    code, out, err = world(capsys, "reproduce", str(elsewhere / "run.tar"), "-C", str(elsewhere))
    assert code == 29 and "error: UNSIGNED: no signature" in err, out + err
    assert list(elsewhere.iterdir()) == [elsewhere / "run.tar"], "refused before anything is rebuilt"
    code, out, err = world(capsys, "reproduce", str(elsewhere / "run.tar"), "-C", str(elsewhere), "--allow-unsigned")
    assert code == 0 and "REPRODUCED" in out and "HASHES HOLD, ORIGIN NOT VERIFIED" in err, out + err
    kept = elsewhere / f"envlock-reproduction-{record.run_id}"
    assert sorted(elsewhere.iterdir()) == [kept, elsewhere / "run.tar"], "only the reproduction's folder, kept"
    assert f"bundle's project rebuilt in {kept} (kept)" in err
    (new,) = [run for run in RunStore(kept).all() if run.run_id != record.run_id]
    assert new.reproduces == record.run_id and (kept / ".envlock" / "runs" / new.run_id / "verdict.json").is_file()

    data = bytearray(bundle.read_bytes())
    start = data.find(b'{"accuracy"')
    data[start + 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    code, _, err = world(capsys, "verify", str(bundle))
    assert code == 26 and "differ from the bundle's own list" in err


def test_report_text_and_html(world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    record = RunStore(world.project).all()[-1]
    world(capsys, "reproduce", record.run_id, "-C", str(world.project))
    code, out, _ = world(capsys, "report", record.run_id, "-C", str(world.project))
    assert code == 0 and "[UNSIGNED]" in out and "reproduced per evidence whose origin is not verified" in out
    assert record.image_id in out and "out/metrics.json" in out and "None" not in out and "False" not in out
    html = tmp_path / "report.html"
    code, _, _ = world(capsys, "report", record.run_id, "-C", str(world.project), "--html", "-o", str(html))
    text = html.read_text()
    assert code == 0 and "<style>" in text and "http" not in text.split("<body>")[0].replace("charset", "")
    assert record.run_id in text and 'data-state="UNSIGNED"' in text and "<script" not in text
    assert "Original and reproduction" in text


@pytest.mark.browser
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    from envlock.evidence.runreport import Section, Summary  # noqa: PLC0415

    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    page = tmp_path / "report.html"
    sections: list[Section] = [("Outputs", [("out/model.pkl", "ab" * 32)]), ("Hardware", [("GPUs", "none <CPU host>")])]
    summary = Summary("envlock run 20260101T000000Z-abcdef", "VERIFIED", "VERIFIED: signed by alice; reproduced",
                      sections)  # fmt: skip
    page.write_text(render_html(summary))
    done = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "envlock run 20260101T000000Z-abcdef" in done.stdout and 'data-state="VERIFIED"' in done.stdout
    assert "VERIFIED: signed by alice; reproduced" in done.stdout
    assert "none &lt;CPU host&gt;" in done.stdout and "out/model.pkl" in done.stdout
