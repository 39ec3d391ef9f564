"""A hostile reviewer's attacks on the evidence chain (record → attestation → trust → bundle → verify, report,
reproduce), one class each, with the outcome envlock must give. Each test names the trick it plays."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tarfile
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envlock.engine.launch import LaunchSpec
from envlock.engine.runtimes import StreamSink
from envlock.evidence.attest import RUN_PREDICATE, attest_run, run_statement
from envlock.evidence.bundle import MANIFEST
from envlock.image.provenance import attestation_path
from envlock.paths import ATTESTATION
from envlock.report import shown
from envlock.run.records import RunStore
from envlock.run.reproduce import Tolerance, compare_output
from envlock.run.schema import JobRecord, JobRequest
from envlock.signing import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    SigningKey,
    canonical,
    envelope,
    generate_key,
    pae,
    write_envelope,
)
from tests.fakes import FakeLauncher
from tests.unit import test_cli_commands
from tests.unit.test_bundle_attacks import _crafted, _edit_record, _made, packed, unpacked
from tests.unit.test_cli_commands import World
from tests.unit.test_environment_failures import ODD, WORDS, make_odd, within
from tests.unit.test_evidence_trust import _git_init, _signed_run
from tests.unit.test_published import _published_run

world = test_cli_commands.world

ESCAPES = "\x1b]0;owned\x07\x1b[1A\x1b[2K\r\u202e\u200b"


def _alice(tmp_path: Path) -> SigningKey:
    """The key of the run's signer (made by _signed_run)."""
    return SigningKey((tmp_path / "keys" / "alice.pem").read_bytes())


def _resign(run_dir: Path, statement: dict[str, Any], key: SigningKey) -> None:
    write_envelope(run_dir / ATTESTATION, envelope(statement, key))


# --- 1. what the signature covers ----------------------------------------------------------------------------------


def test_a_record_edit_that_flattens_like_the_signed_record_is_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`{"git": {"commit": X}}` and `{"git.commit": X}` are not the same record; neither are 0 and false. (A run
    of the project is read through its schema first; a bundle's loose record is compared with the signed one.)"""
    bundle, record = _made(world, capsys)

    def collide(root: Path) -> None:
        signed = json.loads((root / "run" / "record.json").read_text())
        evil = dict(signed, git=dict(signed["git"], commit="e" * 40), exit_code=False)
        evil["git.commit"] = signed["git"]["commit"]  # flattened last: the signed value again
        (root.parent / "evil.json").write_text(json.dumps(evil))

    _crafted(bundle, tmp_path / "collide.tar", collide)
    root = tmp_path / "collide-unpacked"
    (tmp_path / "evil.json").replace(root / "run" / "record.json")  # after the attestation was made
    assert record.exit_code == 0
    code, out, err = world(capsys, "verify", str(packed(root, tmp_path / "collided.tar")), "--allow-unsigned")
    assert code == 26 and "VERIFIED" not in out and "HASHES HOLD" not in out, out + err
    assert "MISMATCH record exit_code: signed 0, on disk false" in out
    assert "MISMATCH record git.commit" in out


def test_duplicate_keys_in_the_record_on_disk_are_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A reader that keeps the first of two keys sees another record than one that keeps the last."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    text = (run_dir / "record.json").read_text()
    (run_dir / "record.json").write_text(text.replace("{", '{\n  "command": ["rm", "-rf", "/"],', 1))
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 21 and out == "", out + err
    assert "is unreadable (ValueError: the key 'command' twice in one table)" in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\ufeff{}", "byte order mark"),
        ('{"seed": NaN}', "NaN"),
        ('{"seed": Infinity}', "Infinity"),
        ('{"seed": -1e400}', "-1e400 is not a finite number"),
        ('{"command": ["\\udc80"]}', "a lone surrogate ('\\udc80') in a string"),
        ("[" * 5000, "nested deeper than 64"),
        ('{"a":' * 500 + "1" + "}" * 500, "nested deeper than 64"),
    ],
)
def test_a_non_canonical_record_on_disk_is_one_line(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, problem: str
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    (run_dir / "record.json").write_text(text)
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code != 0 and "VERIFIED" not in out, out + err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert problem in line


def test_a_second_payload_key_in_the_envelope_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """{"payload": signed, "payload": forged}: a last-key-wins reader and a first-key-wins one would disagree."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    text = (run_dir / ATTESTATION).read_text()
    forged = base64.b64encode(b'{"_type": "x"}').decode()
    (run_dir / ATTESTATION).write_text(text.replace("{", '{"payload": "' + forged + '",', 1))
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "VERIFIED" not in out and "the key 'payload' twice" in err, out + err


def test_a_record_version_downgraded_on_disk_is_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    record = json.loads((run_dir / "record.json").read_text())
    (run_dir / "record.json").write_text(json.dumps(dict(record, record_version=2)))
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "MISMATCH record record_version: signed 6, on disk 2" in out, out


def test_a_key_given_twice_in_bundle_json_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle, _ = _made(world, capsys)
    root = unpacked(bundle, tmp_path / "unpacked")
    text = (root / MANIFEST).read_text()
    (root / MANIFEST).write_text(text.replace("{", '{"run-id": "20991231T235959Z-abcdef",', 1))
    with tarfile.open(tmp_path / "twice.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            archive.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    code, out, err = world(capsys, "verify", str(tmp_path / "twice.tar"), "--allow-unsigned")
    assert code == 31 and "bundle.json is not JSON (the key 'run-id' twice in one table)" in err, out + err


def test_a_signed_run_copied_under_another_run_id_is_not_that_run(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Replaying a genuine run's folder (record, attestation, files) under another id vouches for nothing there."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    other = run_dir.parent / "20991231T235959Z-abcdef"
    shutil.copytree(run_dir, other)
    code, out, err = world(capsys, "verify", other.name, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "VERIFIED" not in out, out + err
    assert f"MISMATCH run id: attested {run_id}, found {other.name}" in out


def test_swapping_outputs_between_two_signed_runs_is_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Run B's attestation carried into run A's folder: every field that differs is named."""
    first, first_dir, public = _signed_run(world, capsys, tmp_path)
    key = _alice(tmp_path)
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": str(tmp_path / "keys" / "alice.pem")}
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/other.json", "--", "python", "u.py")
    world.wiring.environ = {}
    assert code == 0, said
    (second,) = [r.run_id for r in RunStore(world.project).all() if r.run_id != first]
    second_dir = RunStore(world.project).directory(second)
    shutil.copy(second_dir / ATTESTATION, first_dir / ATTESTATION)
    code, out, _ = world(capsys, "verify", first, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "MISMATCH record outputs" in out and key.public.keyid


def test_subjects_that_disagree_with_the_signed_record_are_named(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The subjects (what in-toto tools check) and the record's outputs (what envlock shows) must be one list: a
    statement whose subject names the file's digest while its record names another is not VERIFIED."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    statement = run_statement(run_dir)
    statement["predicate"]["record"]["outputs"]["out/metrics.json"] = "0" * 64
    _resign(run_dir, statement, _alice(tmp_path))
    (run_dir / "record.json").write_text(json.dumps(statement["predicate"]["record"]))
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "MISMATCH subject out/metrics.json" in out, out
    # The log standing in as the subject of a run without outputs: its digest is the log's.
    statement = run_statement(run_dir)
    statement["subject"] = [{"name": f".envlock/runs/{run_id}/log.txt", "digest": {"sha256": "1" * 64}}]
    _resign(run_dir, statement, _alice(tmp_path))
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "MISMATCH subject" in out, out


def test_a_run_file_named_outside_the_run_folder_is_never_read(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A statement naming /etc/passwd or ../../x as a run file would make verify hash the verifier's own files (an
    oracle: does this secret have that content?): such names are mismatches, never opened."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2\n")
    statement = run_statement(run_dir)
    statement["predicate"]["run-files"][str(secret)] = hashlib.sha256(b"hunter2\n").hexdigest()
    statement["predicate"]["run-files"]["../../../../secret.txt"] = hashlib.sha256(b"hunter2\n").hexdigest()
    _resign(run_dir, statement, _alice(tmp_path))
    code, out, _ = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and f"MISMATCH run file {secret}: not a file inside the run's folder" in out, out
    assert "MISMATCH run file ../../../../secret.txt: not a file inside the run's folder" in out
    assert f"ok run file {secret}" not in out


def test_a_payload_type_other_than_in_toto_is_refused_and_never_signs_as_one(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """DSSE binds the payload type into what is signed: a signature made for another type does not hold here."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    key = _alice(tmp_path)
    payload = canonical(run_statement(run_dir))
    sig = base64.b64encode(key.sign(pae("application/json", payload))).decode()
    document = {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                "signatures": [{"keyid": key.public.keyid, "sig": sig}]}  # fmt: skip
    (run_dir / ATTESTATION).write_text(json.dumps(document))
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "claims trusted key" in out and "VERIFIED" not in out, out + err
    document["payloadType"] = "application/json"
    (run_dir / ATTESTATION).write_text(json.dumps(document))
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "not an in-toto statement" in err


def test_a_run_v1_statement_signed_by_a_trusted_key_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    statement = run_statement(run_dir)
    statement["predicateType"] = "https://envlock.dev/run/v1"
    _resign(run_dir, statement, _alice(tmp_path))
    code, _, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "run/v1 attestation" in err


def test_runs_show_verified_shows_no_node_record_the_attestation_does_not_cover(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A submitted run's other nodes keep records of their own beside it (nodes/<rank>/), outside its attestation:
    `runs show --verified` shows what was verified, never their loose facts."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    store = RunStore(world.project)
    record = store.load(run_id)
    assert record.host is not None
    submitted = replace(record, scheduler=JobRecord("slurm", "7", (), record.started, JobRequest()))
    store.save(submitted)
    attest_run(run_dir, _alice(tmp_path))
    forged = replace(submitted, host=replace(record.host, driver_version="999.99-forged"))
    store.for_node(1).save(forged)
    code, out, err = world(capsys, "runs", "show", run_id, "-C", str(world.project), "--verified", "--key", str(public))
    assert code == 0 and "VERIFIED" in err, out + err
    assert "999.99-forged" not in out and "1 more, not shown: their records are outside this run's attestation" in out
    code, out, _ = world(capsys, "runs", "show", run_id, "-C", str(world.project))
    assert code == 0 and "999.99-forged" in out, "shown unverified, where nothing claims it was verified"


# --- 2. trust ------------------------------------------------------------------------------------------------------


def test_a_declared_keyid_that_is_a_prefix_of_a_trusted_one_is_not_trusted(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    mallory = generate_key(tmp_path / "mallory.pem")
    _resign(run_dir, run_statement(run_dir), mallory)
    document = json.loads((run_dir / ATTESTATION).read_text())
    document["signatures"][0]["keyid"] = _alice(tmp_path).public.keyid[:16]
    (run_dir / ATTESTATION).write_text(json.dumps(document))
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 30 and "VERIFIED" not in out, out + err


@pytest.mark.parametrize("loose", ["folder", "key"])
def test_a_trust_store_others_can_write_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, loose: str
) -> None:
    """Whoever can write the trust store decides what is VERIFIED: a store (or key) writable by others is refused."""
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    store = tmp_path / "trust"
    world.wiring.environ = {"ENVLOCK_TRUST_DIR": str(store)}
    assert world(capsys, "trust", "add", str(public), "--name", "alice")[0] == 0
    (store if loose == "folder" else store / "alice.pub").chmod(0o777 if loose == "folder" else 0o666)
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project))
    assert code == 2 and "VERIFIED" not in out and "writable by others" in err, out + err


def test_a_projects_trusted_keys_folder_anyone_can_write_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    keys = world.project / ".envlock" / "trusted-keys"
    keys.mkdir()
    shutil.copy(public, keys / "alice.pub")
    keys.chmod(0o775)  # a team's shared checkout: fine
    assert world(capsys, "verify", run_id, "-C", str(world.project))[0] == 0
    keys.chmod(0o777)
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project))
    assert code == 2 and "the project's trusted-keys'" in err and "writable by others (mode 777)" in err, out + err


def test_a_symlinked_trust_store_is_judged_by_what_it_points_at(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    real = tmp_path / "shared-keys"
    world.wiring.environ = {"ENVLOCK_TRUST_DIR": str(real)}
    assert world(capsys, "trust", "add", str(public), "--name", "alice")[0] == 0
    (tmp_path / "link").symlink_to(real)
    world.wiring.environ = {"ENVLOCK_TRUST_DIR": str(tmp_path / "link")}
    assert world(capsys, "verify", run_id, "-C", str(world.project))[0] == 0  # the user's own 0700 folder
    real.chmod(0o777)
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project))
    assert code == 2 and "writable by others" in err, out + err


@pytest.mark.parametrize(
    ("signatures", "code"), [([], 29), ([{}], 30), ([{"keyid": "x", "sig": "!!"}], 30), ([{"sig": ""}], 30)]
)
def test_verify_never_exits_0_without_a_trusted_key_over_these_bytes(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, signatures: list[object], code: int
) -> None:
    run_id, run_dir, _ = _signed_run(world, capsys, tmp_path)
    document = json.loads((run_dir / ATTESTATION).read_text())
    document["signatures"] = signatures
    (run_dir / ATTESTATION).write_text(json.dumps(document))
    found, out, err = world(capsys, "verify", run_id, "-C", str(world.project))
    assert found == code and "VERIFIED" not in out, out + err


# --- 3. bundles ----------------------------------------------------------------------------------------------------


def test_a_bundle_whose_manifest_names_another_run_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle, record = _made(world, capsys)

    def rename(root: Path) -> None:
        manifest = json.loads((root / "bundle.json").read_text())
        manifest["run-id"] = "20991231T235959Z-abcdef"
        (root / "bundle.json").write_text(json.dumps(manifest))

    crafted = _crafted(bundle, tmp_path / "renamed.tar", rename)
    code, out, err = world(capsys, "verify", str(crafted), "--allow-unsigned")
    assert code == 26 and f"MISMATCH bundle.json: run id: attested {record.run_id}" in out, out + err


def test_a_bundle_pointing_reproduce_at_another_folder_of_the_commit_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """bundle.json's project folder decides where the command re-runs: it is checked against the signed one."""
    (world.project / "decoy").mkdir()
    (world.project / "decoy" / "t.py").write_text("print('not the code that ran')\n")
    _git_init(world.project)
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    bundle = tmp_path / "run.tar"
    assert world(capsys, "bundle", run_id, "-C", str(world.project), "-o", str(bundle), "--with-image")[0] == 0
    assert world(capsys, "verify", str(bundle), "--key", str(public))[0] == 0
    root = unpacked(bundle, tmp_path / "unpacked")
    manifest = json.loads((root / "bundle.json").read_text())
    manifest["project-subdir"] = "decoy/"  # the signed attestation is left as it is: only bundle.json moves
    (root / "bundle.json").write_text(json.dumps(manifest))
    crafted = packed(root, tmp_path / "decoy.tar")
    code, out, err = world(capsys, "verify", str(crafted), "--key", str(public))
    assert code == 26 and "MISMATCH bundle.json: project folder in the repository: attested , found decoy/" in out, (
        out + err
    )
    receiver = tmp_path / "receiver"
    receiver.mkdir()
    code, out, err = world(capsys, "reproduce", str(crafted), "-C", str(receiver), "--key", str(public))
    assert code == 26 and list(receiver.iterdir()) == [], out + err


def test_a_saved_copy_the_signed_record_does_not_name_cannot_ride_in_a_bundle(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """objects/ is a content-addressed store a pull writes into: a copy nobody checks is refused, not carried."""
    _git_init(world.project)
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    bundle = tmp_path / "run.tar"
    assert world(capsys, "bundle", run_id, "-C", str(world.project), "-o", str(bundle))[0] == 0
    root = unpacked(bundle, tmp_path / "unpacked")
    digest = hashlib.sha256(b"the receiver's own file\n").hexdigest()
    (root / "objects" / "sha256" / digest[:2]).mkdir(parents=True)
    (root / "objects" / "sha256" / digest[:2] / digest).write_text("poison\n")
    code, out, err = world(capsys, "verify", str(packed(root, tmp_path / "poison.tar")), "--key", str(public))
    assert code == 26 and f"MISMATCH objects/sha256/{digest[:2]}/{digest}: a saved copy the signed record" in out, (
        out + err
    )


def test_a_pull_never_replaces_the_projects_own_provenance_or_saved_copies(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_id, ref, _ = _published_run(world, capsys, tmp_path)
    image_id = RunStore(world.project).load(run_id).image_id
    other = tmp_path / "other"
    mine = attestation_path(other, image_id)
    mine.parent.mkdir(parents=True)
    mine.write_text("the receiver's own provenance\n")
    code, out, err = world(capsys, "pull", ref, "-C", str(other), "--key", str(tmp_path / "keys" / "signing.pem.pub"))
    assert code == 0 and f"pulled run {run_id}" in out, out + err
    assert mine.read_text() == "the receiver's own provenance\n"


def test_a_bundle_file_nothing_signed_names_is_a_mismatch(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every file of a bundle is covered by a check (or is the bundle's own list): a stowaway is named, whether it
    looks like a git hook, an output nobody declared or an input outside the signed manifest."""
    _git_init(world.project)
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    bundle = tmp_path / "run.tar"
    assert world(capsys, "bundle", run_id, "-C", str(world.project), "-o", str(bundle))[0] == 0
    root = unpacked(bundle, tmp_path / "unpacked")
    for name in (".git/hooks/post-checkout", "outputs/undeclared.bin", "inputs/data/extra.csv", "notes.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("#!/bin/sh\ntouch /tmp/owned\n")
    code, out, err = world(capsys, "verify", str(packed(root, tmp_path / "stowaways.tar")), "--key", str(public))
    assert code == 26, out + err
    for name in (".git/hooks/post-checkout", "outputs/undeclared.bin", "inputs/data/extra.csv", "notes.txt"):
        assert f"MISMATCH bundle file {name}: nothing signed names it" in out, name


def test_git_never_reads_a_git_folder_the_bundle_carries(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """verify reads the git bundle's heads with git: never from the folder the bundle was unpacked into, where a
    `.git` of the sender's would be the repository whose config git reads (here one that names nowhere)."""
    _git_init(world.project)
    run_id, _, public = _signed_run(world, capsys, tmp_path)
    bundle = tmp_path / "run.tar"
    assert world(capsys, "bundle", run_id, "-C", str(world.project), "-o", str(bundle))[0] == 0
    root = unpacked(bundle, tmp_path / "unpacked")
    (root / ".git").write_text("gitdir: /nonexistent/elsewhere\n")
    code, out, err = world(capsys, "verify", str(packed(root, tmp_path / "dotgit.tar")), "--key", str(public))
    assert code == 26 and "MISMATCH bundle file .git: nothing signed names it" in out, out + err
    assert "ok code.gitbundle: the signed commit" in out, out


def test_files_the_attestation_never_bound_cannot_ride_in_a_bundle(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """run/nodes/… and Slurm's output are left out of what a run's attestation binds; a bundle has neither."""
    bundle, _ = _made(world, capsys)

    def smuggle(root: Path) -> None:
        (root / "run" / "nodes" / "1").mkdir(parents=True)
        (root / "run" / "nodes" / "1" / "record.json").write_text("{}")
        (root / "run" / "slurm-7.out").write_text("VERIFIED\n")

    crafted = _crafted(bundle, tmp_path / "smuggled.tar", smuggle)
    code, out, err = world(capsys, "verify", str(crafted), "--allow-unsigned")
    assert code == 26, out + err
    assert "MISMATCH run file nodes/1/record.json: not in the attestation" in out
    assert "MISMATCH run file slurm-7.out: not in the attestation" in out


def test_terminal_escapes_in_a_bundles_record_are_shown_escaped(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A record's strings reach the receiver's terminal: no escape sequence, bidi override or line break of
    theirs may rewrite what envlock prints (the verdict line above, a fake `ok` line below)."""
    bundle, _ = _made(world, capsys)

    def inject(root: Path) -> None:
        _edit_record(root, lambda r: r.update(command=["t.py", f"{ESCAPES}\n[VERIFIED] signed by alice"]))

    crafted = _crafted(bundle, tmp_path / "escapes.tar", inject)
    code, report, err = world(capsys, "report", str(crafted))
    assert code == 0, err
    assert not any(c in report for c in "\x1b\x07\r\u202e\u200b") and "\n[VERIFIED]" not in report, report
    assert "\\x1b]0;owned\\x07" in report
    # Edited after attestation: verify names both values, escaped; the error line too.
    root = tmp_path / "escapes-unpacked"
    _edit_record(root, lambda r: r.update(image_reference=f"x{ESCAPES}\nok everything"))
    document = json.loads((root / "run" / ATTESTATION).read_text())
    document["signatures"] = [{"keyid": f"{ESCAPES}beef", "sig": "AAAA"}]
    (root / "run" / ATTESTATION).write_text(json.dumps(document))
    code, out, err = world(capsys, "verify", str(packed(root, tmp_path / "escapes2.tar")))
    assert code in (26, 30), out + err
    assert not any(c in out + err for c in "\x1b\x07\r\u202e") and "\nok everything" not in out, out + err


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_shown_text_has_no_control_line_break_or_bidi_character_and_keeps_the_rest(text: str) -> None:
    made = shown(text)
    unsafe = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
    assert not any(unicodedata.category(c) in unsafe for c in made)
    assert all(c in made for c in text if unicodedata.category(c) not in unsafe)
    made.encode("utf-8")  # printable anywhere: no lone surrogate left


def test_a_lone_surrogate_in_a_bundles_record_is_one_line_not_a_crash(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """JSON can spell "\\udc80", which is no character: printing or writing it as UTF-8 raises. Refused on reading."""
    bundle, _ = _made(world, capsys)
    root = unpacked(bundle, tmp_path / "unpacked")
    record = json.loads((root / "run" / "record.json").read_text())
    record["command"] = ["t.py", "\udc80"]
    (root / "run" / "record.json").write_text(json.dumps(record))  # ASCII: the surrogate spelled \udc80
    predicate = {"run-id": record["run_id"], "record": record, "run-files": {}}
    statement = {"_type": STATEMENT_TYPE, "predicateType": RUN_PREDICATE, "subject": [], "predicate": predicate}
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    (root / "run" / ATTESTATION).write_text(
        json.dumps({"payload": payload, "payloadType": PAYLOAD_TYPE, "signatures": []})
    )
    crafted = packed(root, tmp_path / "surrogate.tar")
    page = tmp_path / "r.html"
    for args in (("verify", str(crafted), "--allow-unsigned"), ("report", str(crafted), "--html", "-o", str(page))):
        code, out, err = world(capsys, *args)
        assert code == 26 and "a lone surrogate ('\\udc80') in a string" in err, out + err


def test_a_bundle_record_naming_script_is_inert_in_the_html_report(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle, _ = _made(world, capsys)
    script = '<script>alert(1)</script><img src=x onerror="alert(2)">'

    def inject(root: Path) -> None:
        _edit_record(root, lambda r: r.update(command=["t.py", script], image_reference=script))

    crafted = _crafted(bundle, tmp_path / "script.tar", inject)
    page = tmp_path / "r.html"
    code, _, err = world(capsys, "report", str(crafted), "--html", "-o", str(page))
    text = page.read_text()
    assert code == 0 and "<script" not in text and "<img" not in text and "&lt;script&gt;" in text, err


# --- 4. reproduce --------------------------------------------------------------------------------------------------


def test_a_foreign_record_names_no_registry_envlock_pulls_from_unasked(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bundle with its image: the receiver's engine is never sent to a registry the (foreign) record names."""
    bundle, record = _made(world, capsys)

    def registry(root: Path) -> None:
        _edit_record(root, lambda r: r.update(repo_digests=["evil.example:5000/x@sha256:" + "a" * 64]))

    crafted = _crafted(bundle, tmp_path / "registry.tar", registry)
    world.engine.images.pop(record.image_id)
    world.engine.tags.clear()
    receiver = tmp_path / "receiver"
    receiver.mkdir()
    code, out, err = world(capsys, "reproduce", str(crafted), "-C", str(receiver), "--allow-unsigned")
    assert world.engine.pulls == [], out + err
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    assert "not pulling evil.example:5000/x@sha256:" in err and "only with --pull" in err
    # The user's word: --pull lets the engine ask the record's registry (unreachable here: the archive serves).
    world.engine.images.pop(record.image_id)
    code, out, err = world(capsys, "reproduce", str(crafted), "-C", str(receiver), "--allow-unsigned", "--pull",
                           "--keep", str(tmp_path / "again"))  # fmt: skip
    assert world.engine.pulls == ["evil.example:5000/x@sha256:" + "a" * 64] and code == 0, out + err

    # Without its image in the bundle: nothing is fetched or rebuilt unasked; the error says how to ask.
    def imageless(root: Path) -> None:
        registry(root)
        (root / "image.tar").unlink()
        manifest = json.loads((root / "bundle.json").read_text())
        manifest["image"]["archive"] = None
        (root / "bundle.json").write_text(json.dumps(manifest))

    bare = _crafted(bundle, tmp_path / "imageless.tar", imageless)
    world.engine.images.pop(record.image_id)
    world.engine.pulls.clear()
    loads = world.engine.loads
    code, out, err = world(capsys, "reproduce", str(bare), "-C", str(receiver), "--allow-unsigned",
                           "--keep", str(tmp_path / "bare"))  # fmt: skip
    assert code == 15 and world.engine.pulls == [] and world.engine.loads == loads, out + err
    assert (
        "a bundle's run is fetched or rebuilt only with --pull" in err and "hint: reproduce it again with --pull" in err
    )


def test_a_saved_copy_that_is_not_the_output_never_makes_a_reproduction(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The record claims accuracy 0.99; the kept metrics copy says what the re-run will really give (0.93): the
    re-run is compared with the claim, never with a copy that is not it."""
    bundle, _ = _made(world, capsys)
    claimed = b'{"accuracy": 0.99}\n'

    def inflate(root: Path) -> None:
        digest = hashlib.sha256(claimed).hexdigest()
        _edit_record(root, lambda r: r.update(outputs={"out/metrics.json": digest}))
        (root / "outputs" / "out" / "metrics.json").write_bytes(claimed)

    crafted = _crafted(bundle, tmp_path / "inflated.tar", inflate)
    code, out, err = world(capsys, "verify", str(crafted), "--allow-unsigned")
    assert code == 26 and "MISMATCH run file outputs/out/metrics.json: not the output" in out, out + err
    receiver = tmp_path / "receiver"
    receiver.mkdir()
    world.engine.images.clear()
    code, out, err = world(capsys, "reproduce", str(crafted), "-C", str(receiver), "--allow-unsigned")
    assert code != 0 and "REPRODUCED" not in out.replace("NOT REPRODUCED", ""), out + err
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_bytes(b'{"accuracy": 0.93}\n')
    new.write_bytes(b'{"accuracy": 0.93}\n')
    digest = hashlib.sha256(claimed).hexdigest()
    check = compare_output("m.json", (digest, hashlib.sha256(new.read_bytes()).hexdigest()), old, new, Tolerance())
    assert check.status == "differs" and "the original's kept copy is not its output" in check.details[0], check


@dataclass
class LinkingLauncher(FakeLauncher):
    """A bundle's code that, in the container, replaces its output with a link to a file of the receiver's."""

    target: Path = Path("/nonexistent")

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        code = super().run(spec, output)
        (spec.project_dir / "out" / "metrics.json").unlink()
        (spec.project_dir / "out" / "metrics.json").symlink_to(self.target)
        return code


def test_an_output_the_rerun_links_to_a_receivers_file_is_never_read(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Outputs are hashed, kept and compared only where they lie inside the project: a link the re-run made to the
    receiver's secrets is not produced, and their bytes go nowhere (not the verdict, not the kept folder)."""
    bundle, _ = _made(world, capsys)
    secret = tmp_path / "secrets" / "credentials.json"
    secret.parent.mkdir()
    secret.write_text('{"token": "s3cr3t-of-the-receiver"}')
    world.wiring.launcher_ = LinkingLauncher(writes=dict(world.launcher.writes), target=secret)
    receiver = tmp_path / "receiver"
    receiver.mkdir()
    code, out, err = world(capsys, "reproduce", str(bundle), "-C", str(receiver), "--allow-unsigned")
    assert code == 16 and "output out/metrics.json: missing" in out, out + err
    kept = [p for p in receiver.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not any(b"s3cr3t" in p.read_bytes() for p in kept) and "s3cr3t" not in out + err


def test_a_pulled_run_is_reproduced_as_the_bundle_it_came_in_never_as_ones_own(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`envlock pull` puts another machine's run into the run store; `reproduce RUN` of it must not take it for
    the project's own (which passes the variables its record names, pulls from its registries, moves the tag it
    names and runs git with the user's hooks): it is re-run from its bundle, verified under the user's trust, in
    a kept folder of its own."""
    run_id, ref, _ = _published_run(world, capsys, tmp_path)
    pub = str(tmp_path / "keys" / "signing.pem.pub")
    other = tmp_path / "other"
    assert world(capsys, "pull", ref, "-C", str(other), "--key", pub)[0] == 0
    world.wiring.environ = {"AWS_SECRET_ACCESS_KEY": "receivers-secret"}
    code, out, err = world(capsys, "reproduce", run_id, "-C", str(other))
    assert code == 30 and "UNTRUSTED KEY" in err and "from the bundle it was pulled in" in err, out + err
    code, out, err = world(capsys, "reproduce", run_id, "-C", str(other), "--key", pub)
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    assert (other / f"envlock-reproduction-{run_id}").is_dir()
    assert all("receivers-secret" not in str(spec.environment) for spec in world.launcher.launched)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"a": {"b": 1}}, {"a.b": 1}),
        ({"a": [1, 2]}, {"a": {"[0]": 1, "[1]": 2}}),
        ({"acc": 0.5}, '{"acc": 0.1, "acc": 0.5}'),
    ],
)
def test_metrics_that_differ_in_shape_are_never_within_tolerance(tmp_path: Path, before: object, after: object) -> None:
    """Zero tolerance compares values, but never two different documents as one (flattened names colliding,
    a key given twice)."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(before))
    new.write_text(after if isinstance(after, str) else json.dumps(after))
    check = compare_output("m.json", ("1" * 64, "2" * 64), old, new, Tolerance())
    assert check.status == "differs", check


@pytest.mark.parametrize(
    ("before", "after", "status"),
    [
        ('{"loss": NaN, "n": 1}', '{"n": 1, "loss": NaN}', "within tolerance"),
        ('{"loss": NaN}', '{"loss": 0.5}', "differs"),
    ],
)
def test_nan_in_metrics_is_compared_not_refused(tmp_path: Path, before: str, after: str, status: str) -> None:
    """Metrics files are the user's own: Python's json writes NaN there, and NaN reproduced is reproduced (the
    strict reader refuses NaN in envlock's evidence, not in what a run wrote)."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(before)
    new.write_text(after)
    digests = (hashlib.sha256(before.encode()).hexdigest(), hashlib.sha256(after.encode()).hexdigest())
    assert compare_output("m.json", digests, old, new, Tolerance()).status == status


def test_an_attested_run_reattested_unchanged_still_verifies(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The fixes above refuse tricks, not envlock's own evidence: attest again, verify again."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    attest_run(run_dir, _alice(tmp_path))
    code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 0 and out.splitlines()[-1].startswith("VERIFIED: signed by alice"), out + err


@pytest.mark.parametrize("kind", ODD)
def test_an_attestation_that_is_no_small_file_is_one_line_never_a_hang(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    """A FIFO in the attestation's place would wait for a writer forever; a 2 GB one would be read into memory."""
    run_id, run_dir, public = _signed_run(world, capsys, tmp_path)
    make_odd(run_dir / ATTESTATION, kind)
    with within(10):
        code, out, err = world(capsys, "verify", run_id, "-C", str(world.project), "--key", str(public))
    assert code == 26 and "no readable attestation" in err and WORDS[kind] in err, out + err
    assert "VERIFIED" not in out
