"""Evidence a stranger can stake a result on: what is signed is what is shown, trust is explicit, and every entry
point leaves an attestation. Each test is one class of attack or one entry point, with its exact outcome."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from envlock.evidence.attest import run_statement
from envlock.paths import ATTESTATION, SIGNER
from envlock.run.records import RunStore
from envlock.signing import PublicKey, SigningKey, envelope, generate_key, write_envelope
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World

world = test_cli_commands.world


def _keys(tmp_path: Path) -> tuple[SigningKey, Path]:
    key = generate_key(tmp_path / "keys" / "alice.pem")
    return key, tmp_path / "keys" / "alice.pem.pub"


def _signed_run(world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, Path, Path]:
    """A run signed by alice; returns its id, its folder and alice's public key."""
    key, public = _keys(tmp_path)
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": str(key.path)}
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    assert code == 0 and "signed by" in said, said
    world.wiring.environ = {}
    record = RunStore(world.project).all()[-1]
    return record.run_id, RunStore(world.project).directory(record.run_id), public


def _git_init(project: Path) -> None:
    subprocess.run(["git", "-C", str(project), "init", "-q"], check=True)
    (project / ".gitignore").write_text(".envlock/\nout/\n")
    subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"],
                   check=True)  # fmt: skip


def _edit_record(run_dir: Path, edit: dict[str, object]) -> None:
    record = json.loads((run_dir / "record.json").read_text())
    for dotted, value in edit.items():
        *parents, last = dotted.split(".")
        table = record
        for part in parents:
            table = table[part]
        table[last] = value
    (run_dir / "record.json").write_text(json.dumps(record, indent=2))


def test_record_fields_edited_under_a_valid_signature_are_each_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _git_init(world.project)
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    signed_commit = json.loads((run_dir / "record.json").read_text())["git"]
    gpu = {"index": 0, "name": "NVIDIA H100", "uuid": "GPU-1", "memory-mib": 81559, "compute-capability": "9.0",
           "mig-mode": "disabled", "ecc-mode": "enabled"}  # fmt: skip
    _edit_record(
        run_dir,
        {"git.commit": "cdf5186" + "0" * 33, "git.dirty": True, "host.gpus": [gpu], "host.driver-version": "570.1",
         "started": "2020-01-01T00:00:00Z", "environment.CUBLAS_WORKSPACE_CONFIG": ":0:0", "passed_env": ["X"]},
    )  # fmt: skip
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26, out + err
    assert f"MISMATCH record git.commit: signed {str(signed_commit['commit'])[:12]}…, on disk cdf5186" in out
    for field in ("git.dirty", "host.gpus", "host.driver-version", "started", "passed_env"):
        assert f"MISMATCH record {field}: signed" in out, field
    assert "MISMATCH record environment.CUBLAS_WORKSPACE_CONFIG" in out
    assert err.startswith("error: VERIFICATION FAILED: ") and "VERIFIED" not in out
    # The report and `runs show --verified` show the signed values, never the edited ones.
    code, report, _ = world(capsys, "report", run_id, "-C", str(world.project), "--key", str(public))
    shown = report.split("\nVerified\n")[0]  # what is rendered as the run; the checks below it name both values
    assert code == 0 and "[VERIFICATION FAILED]" in report and "NVIDIA H100" not in shown and "cdf5186" not in shown
    assert f"commit               {signed_commit['commit']}" in shown and "GPUs              no GPU" in shown
    code, shown, err = world(
        capsys, "runs", "show", run_id, "-C", str(world.project), "--verified", "--key", str(public)
    )
    assert code == 26 and shown == "" and "VERIFICATION FAILED" in err


def test_saved_untracked_file_edited_in_the_object_store_is_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _git_init(world.project)
    (world.project / "helper.py").write_text("SCALE = 1\n")
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    saved = json.loads((run_dir / "record.json").read_text())["git"]["untracked-saved"]
    digest = saved["helper.py"]
    obj = world.project / ".envlock" / "objects" / "sha256" / digest[:2] / digest
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 0 and "ok untracked helper.py (content)" in out, out
    obj.chmod(0o644)
    obj.write_text("SCALE = 1000\n")
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and f"MISMATCH untracked helper.py: its saved copy does not hash to {digest[:12]}" in out


def _forge(run_dir: Path, mallory: SigningKey) -> None:
    """Re-make the statement over the edited folder and sign it with another key, shipped beside it."""
    write_envelope(run_dir / ATTESTATION, envelope(run_statement(run_dir), mallory))
    (run_dir / SIGNER).write_bytes(mallory.public.pem)


def test_hashes_recomputed_and_resigned_with_another_key_are_never_verified(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    _edit_record(run_dir, {"git.commit": "f" * 40})
    mallory = generate_key(tmp_path / "mallory.pem")
    _forge(run_dir, mallory)
    project = str(world.project)
    # Alice's key named: the forged signature is not hers.
    code, _, err = world(capsys, "verify", run_id, "-C", project, "--key", str(public))
    assert code == 30 and f"error: UNTRUSTED KEY {mallory.public.keyid[:16]}: signed by a key you do not trust" in err
    # No key at all: the key shipped beside it is not trusted for being there.
    code, out, err = world(capsys, "verify", run_id, "-C", project)
    assert code == 30 and "UNTRUSTED KEY" in err and "VERIFIED" not in out
    # Alice in the trust store: still refused.
    world.wiring.environ = {"ENVLOCK_TRUST_DIR": str(tmp_path / "trust")}
    assert world(capsys, "trust", "add", str(public), "--name", "alice")[0] == 0
    code, _, err = world(capsys, "verify", run_id, "-C", project)
    assert code == 30 and "UNTRUSTED KEY" in err
    # --allow-unsigned: the hashes hold (the forger made them), and the verdict says the origin is not verified.
    code, out, _ = world(capsys, "verify", run_id, "-C", project, "--allow-unsigned")
    assert code == 0 and "HASHES HOLD, ORIGIN NOT VERIFIED: signed by key" in out and "not trusted here" in out
    # The report's banner is not VERIFIED either.
    code, report, _ = world(capsys, "report", run_id, "-C", project)
    assert code == 0 and report.splitlines()[1].startswith("[UNTRUSTED KEY]")


def test_a_claimed_trusted_keyid_with_a_bad_signature_is_a_mismatch(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    document = json.loads((run_dir / ATTESTATION).read_text())
    document["signatures"][0]["sig"] = document["signatures"][0]["sig"][::-1]
    (run_dir / ATTESTATION).write_text(json.dumps(document))
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "MISMATCH attestation: the signature claims trusted key alice.pem but does not hold" in out


def test_trust_store_add_list_remove_and_the_project_folder(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    store = tmp_path / "trust"
    world.wiring.environ = {"ENVLOCK_TRUST_DIR": str(store)}
    project = str(world.project)
    assert world(capsys, "verify", run_id, "-C", project)[0] == 30
    code, out, _ = world(capsys, "trust", "add", str(public), "--name", "alice")
    keyid = PublicKey(public.read_bytes()).keyid
    assert code == 0 and f"trusted alice: key {keyid}" in out and oct(store.stat().st_mode & 0o777) == "0o700"
    code, out, _ = world(capsys, "verify", run_id, "-C", project)
    assert code == 0 and f"VERIFIED: signed by alice (key {keyid[:16]}, trusted: your trust store)" in out
    code, out, _ = world(capsys, "trust", "list")
    assert code == 0 and out.split() == ["alice", keyid, "(your", "trust", "store)"]
    code, _, err = world(capsys, "trust", "add", str(public), "--name", "again")
    assert code == 2 and "already trusted as 'alice'" in err
    code, _, err = world(capsys, "trust", "add", str(public), "--name", "../evil")
    assert code == 2 and "not a usable key name" in err
    code, out, _ = world(capsys, "trust", "remove", keyid[:12])
    assert code == 0 and "no longer trusted: alice" in out and list(store.iterdir()) == []
    assert world(capsys, "verify", run_id, "-C", project)[0] == 30
    # A team's committed folder counts for the project's own runs.
    team = world.project / ".envlock" / "trusted-keys"
    team.mkdir(parents=True)
    (team / "alice.pub").write_bytes(public.read_bytes())
    code, out, _ = world(capsys, "verify", run_id, "-C", project)
    assert code == 0 and "trusted: the project's .envlock/trusted-keys" in out
    (team / "broken.pub").write_text("not a key")
    code, _, err = world(capsys, "verify", run_id, "-C", project)
    assert code == 2 and f"the trusted key {team / 'broken.pub'} is not a PEM public key" in err


def test_report_states_and_a_record_only_reproduction_is_not_counted(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    project = str(world.project)
    code, report, _ = world(capsys, "report", run_id, "-C", project, "--key", str(public))
    assert code == 0 and report.splitlines()[1].startswith("[VERIFIED] VERIFIED: signed by alice.pem")
    assert "not in git" in report and "no GPU" in report and "None" not in report and "False" not in report
    # A "reproduction" made by writing a record by hand (no attestation) is not counted.
    fake_id = "20991231T235959Z-abcdef"
    fake = RunStore(world.project).directory(fake_id)
    fake.mkdir()
    for name in ("envlock.lock", "log.txt"):
        (fake / name).write_bytes((run_dir / name).read_bytes())
    record = json.loads((run_dir / "record.json").read_text()) | {"run_id": fake_id, "reproduces": run_id}
    (fake / "record.json").write_text(json.dumps(record))
    code, report, _ = world(capsys, "report", run_id, "-C", project, "--key", str(public))
    assert code == 0 and f"{fake_id}  not counted: NOT ATTESTED" in report and "; not reproduced yet" in report
    # Unsigned: the banner says so.
    (run_dir / ATTESTATION).unlink()
    code, report, _ = world(capsys, "report", run_id, "-C", project)
    assert report.splitlines()[1].startswith("[NOT ATTESTED]")


def test_each_entry_point_leaves_an_attestation_verify_accepts(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    key = str(tmp_path / "keys" / "alice.pem")
    project = str(world.project)
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": key}
    # reproduce: the re-run is attested (with its verdict) and names the original.
    code, out, err = world(capsys, "reproduce", run_id, "-C", project)
    assert code == 0 and "REPRODUCED" in out, out + err
    (rerun,) = [r for r in RunStore(world.project).all() if r.reproduces == run_id]
    code, out, _ = world(capsys, "verify", rerun.run_id, "-C", project, "--key", str(public))
    assert code == 0 and "ok run file verdict.json" in out
    # A Slurm node: the submitted run's task ends with an attestation.
    code, out, err = world(capsys, "submit", "-C", project, "--slurm", "--", "python", "t.py")
    assert code == 0, err
    queued = RunStore(world.project).load(out.split()[1].rstrip(":"))
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": key, "SLURM_JOB_ID": "42", "SLURM_NODEID": "0"}
    code, _, err = world(capsys, "run-submitted", queued.run_id, "-C", project)
    assert code == 0, err
    code, out, _ = world(capsys, "verify", queued.run_id, "-C", project, "--key", str(public))
    assert code == 0 and "VERIFIED" in out
    # A submitted run Slurm ended before its task ran: whoever settles it attests it.
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": key}
    code, out, _ = world(capsys, "submit", "-C", project, "--slurm", "--", "python", "t.py")
    cancelled = RunStore(world.project).load(out.split()[1].rstrip(":"))
    assert cancelled.scheduler is not None and cancelled.scheduler.job_id
    world.slurm.states[cancelled.scheduler.job_id] = f"JobId={cancelled.scheduler.job_id} JobState=CANCELLED"
    assert world(capsys, "runs", "-C", project)[0] == 0
    code, out, err = world(capsys, "verify", cancelled.run_id, "-C", project, "--key", str(public))
    assert code == 0 and "VERIFIED" in out, out + err
    assert RunStore(world.project).load(cancelled.run_id).status == "interrupted"
    # A build on the way (run of a lock whose image is gone) leaves the image's provenance.
    world.engine.remove(RunStore(world.project).load(run_id).image_id)
    for provenance in (world.project / ".envlock" / "attestations").glob("*.dsse.json"):
        provenance.unlink()
    assert world(capsys, "run", "-C", project, "--", "true")[0] == 0
    assert list((world.project / ".envlock" / "attestations").glob("*.dsse.json"))


def test_an_unreadable_key_in_the_environment_does_not_break_a_listing(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key, _ = _keys(tmp_path)
    assert key.path is not None
    key.path.chmod(0o644)
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": str(key.path)}
    code, _, err = world(capsys, "run", "-C", str(world.project), "--", "true")
    assert code == 125 and "can be read by others" in err
    assert world(capsys, "runs", "-C", str(world.project))[0] == 0


def test_the_bundle_reviewers_view_is_rendered_from_the_verified_statement(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _git_init(world.project)
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    bundle = tmp_path / "run.tar"
    assert world(capsys, "bundle", run_id, "-C", str(world.project), "-o", str(bundle))[0] == 0
    code, report, err = world(capsys, "report", str(bundle), "--key", str(public))
    assert code == 0, err
    assert report.splitlines()[0] == f"envlock run {run_id} (bundle)"
    assert report.splitlines()[1].startswith("[VERIFIED] VERIFIED: signed by alice.pem")
    assert "ok code.gitbundle: the signed commit" in report and "no GPU" in report
    # The key shipped inside the bundle (beside the run) vouches for nothing.
    code, report, _ = world(capsys, "report", str(bundle))
    assert code == 0 and report.splitlines()[1].startswith("[UNTRUSTED KEY]")
    html = tmp_path / "bundle.html"
    code, _, _ = world(capsys, "report", str(bundle), "--key", str(public), "--html", "-o", str(html))
    assert code == 0 and 'data-state="VERIFIED"' in html.read_text()


def test_a_rerun_from_a_bundle_is_attested_and_verifies_with_the_receivers_key(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _git_init(world.project)
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    bundle = tmp_path / "run.tar"
    assert world(capsys, "bundle", run_id, "-C", str(world.project), "-o", str(bundle))[0] == 0
    receiver = generate_key(tmp_path / "receiver" / "bob.pem")
    kept = tmp_path / "review"
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": str(receiver.path)}
    code, out, err = world(capsys, "reproduce", str(bundle), "--key", str(public), "--keep", str(kept))
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    (rerun,) = [r for r in RunStore(kept).all() if r.reproduces == run_id]
    code, out, err = world(
        capsys, "verify", rerun.run_id, "-C", str(kept), "--key", str(tmp_path / "receiver" / "bob.pem.pub")
    )
    assert code == 0 and "VERIFIED: signed by bob.pem" in out and "ok run file verdict.json" in out, out + err


def test_restores_rebuild_leaves_the_images_provenance(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, _, _ = _signed_run(world, capsys, tmp_path)
    image_id = RunStore(world.project).load(run_id).image_id
    attestations = world.project / ".envlock" / "attestations"
    for provenance in attestations.glob("*.dsse.json"):
        provenance.unlink()
    world.engine.remove(image_id)
    code, out, err = world(capsys, "restore", run_id, "-C", str(world.project))
    assert code == 0 and "rebuild" in out + err, out + err
    assert (attestations / f"{image_id.removeprefix('sha256:')}.dsse.json").is_file()
