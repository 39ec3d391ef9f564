"""A run's attestation (in-toto Statement v1, predicate https://envlock.dev/run/v1, in a DSSE envelope) and its
verification against what is on disk.

The statement binds what a result depends on — image ID and digests, lock hash and the lock copy's bytes, commit,
diff and untracked files, inputs, host, seed and determinism settings, command, exit status — to every output's
sha256 (the statement's subjects) and to every file the run keeps beside its record. It is read from the record
as JSON, so parts other versions of the record add (inputs, untracked files' hashes) are carried as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envlock import __version__
from envlock.errors import EnvlockError, VerificationError
from envlock.fsutil import sha256_file
from envlock.image.provenance import SLSA_PROVENANCE, hex_of
from envlock.lock import lockfile
from envlock.signing import (
    STATEMENT_TYPE,
    Opened,
    PublicKey,
    SigningKey,
    envelope,
    load_public_key,
    open_envelope,
    write_envelope,
)

RUN_PREDICATE = "https://envlock.dev/run/v1"
ATTESTATION = "attestation.dsse.json"
SIGNER = "attestation.pub.pem"  # the signer's public key, beside: convenient, but self-asserted (use --key)
# Files of a run folder that are not evidence of the run: the record (rewritten by envlock), the attestation.
_NOT_BOUND = frozenset({"record.json", ATTESTATION, SIGNER})


def _record_json(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"the run record in {run_dir} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise VerificationError(f"the run record in {run_dir} is not a table")
    return data


def run_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every file the run keeps beside its record (lock copy, diff, log, saved outputs, untracked…)."""
    found = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if (
            path.is_file()
            and not path.is_symlink()
            and relative not in _NOT_BOUND
            and not relative.startswith("nodes/")
        ):
            found[relative] = sha256_file(path)
    return found


def run_statement(run_dir: Path) -> dict[str, Any]:
    """The in-toto statement of a finished run, from its folder."""
    record = _record_json(run_dir)
    host = record.get("host") or {}
    git = record.get("git") or {}
    outputs = {str(k): v for k, v in (record.get("outputs") or {}).items()}
    subject = [{"name": path, "digest": {"sha256": digest}} for path, digest in sorted(outputs.items()) if digest]
    files = run_files(run_dir)
    if not subject:  # a statement needs a subject: the run's log stands in when it declared no outputs
        subject = [
            {"name": f".envlock/runs/{record.get('run_id')}/log.txt", "digest": {"sha256": files.get("log.txt", "")}}
        ]
    predicate = {
        "run-id": record.get("run_id"),
        "envlock-version": __version__,
        "command": record.get("command"),
        "status": record.get("status"),
        "exit-code": record.get("exit_code"),
        "started": record.get("started"),
        "ended": record.get("ended"),
        "image": {
            "id": record.get("image_id"),
            "reference": record.get("image_reference"),
            "digests": record.get("repo_digests") or [],
        },
        "lock": {
            "hash": record.get("lock_hash"),
            "platform": record.get("platform"),
            "copy-sha256": files.get("envlock.lock"),
        },
        "code": {
            "commit": git.get("commit"),
            "dirty": git.get("dirty"),
            "diff-sha256": git.get("diff-sha256"),
            "untracked": git.get("untracked") or [],
        },
        "inputs": record.get("inputs"),
        "host": {
            "driver": host.get("driver-version"),
            "cuda-driver": host.get("cuda-driver-version"),
            "gpus": [
                {k: g.get(k) for k in ("name", "uuid", "compute-capability", "mig-mode", "ecc-mode")}
                for g in host.get("gpus") or []
            ],
            "cpu-model": host.get("cpu-model"),
            "kernel": host.get("kernel"),
            "docker-version": host.get("docker-version"),
        },
        "seed": record.get("seed"),
        "determinism": record.get("environment") or {},
        "passed-env": record.get("passed_env") or [],
        "forced": record.get("forced"),
        "preflight": record.get("preflight") or [],
        "reproduces": record.get("reproduces"),
        "outputs": outputs,
        "run-files": files,
    }
    return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": RUN_PREDICATE, "predicate": predicate}


def attest_run(run_dir: Path, key: SigningKey | None) -> Path:
    """Write `attestation.dsse.json` beside the record (signed when a key is given; the signer's public key too)."""
    path = write_envelope(run_dir / ATTESTATION, envelope(run_statement(run_dir), key))
    signer = run_dir / SIGNER
    if key is not None:
        signer.write_bytes(key.public.pem)
    else:
        signer.unlink(missing_ok=True)
    return path


@dataclass
class Checks:
    """What a verification found: what held, what did not (each named), and what could not be checked."""

    held: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def expect(self, what: str, expected: object, found: object) -> None:
        """One comparison, recorded as held or as a mismatch naming both values."""
        if expected == found:
            self.held.append(what)
        else:
            self.mismatches.append(f"{what}: attested {_short(expected)}, found {_short(found)}")

    def lines(self) -> list[str]:
        """The checks as text, mismatches first."""
        return (
            [f"MISMATCH {m}" for m in self.mismatches]
            + [f"not checked: {u}" for u in self.unchecked]
            + [f"ok {h}" for h in self.held]
        )


def _short(value: object) -> str:
    text = "absent" if value is None else str(value)
    return text[:19] if text.startswith("sha256:") else text[:64]


def open_checked(document: object, key: PublicKey | None, beside: Path | None, checks: Checks, where: str) -> Opened:
    """Open the envelope: with --key, its signature must be that key's; without, the key beside it (if any) is used
    and said to be self-asserted; an unsigned envelope is named as such."""
    signer = key
    if signer is None and beside is not None and beside.is_file():
        signer = load_public_key(beside)
        checks.unchecked.append(
            f"who signed: the key beside the attestation ({signer.keyid[:16]}) vouches for "
            "itself; pass --key PUB to pin the signer"
        )
    if signer is None:
        opened = open_envelope(document, None, where)
        if opened.signatures:
            checks.unchecked.append(f"{where}: signed, but no public key was given (--key PUB)")
        else:
            checks.unchecked.append(f"{where} is unsigned: its hashes are checked, its origin cannot be")
        return opened
    opened = open_envelope(document, signer, where)
    checks.held.append(f"signature by key {opened.signed_by}")
    return opened


def verify_run_dir(
    run_dir: Path,
    outputs_root: Path,
    *,
    key: PublicKey | None,
    image_present: Callable[[str], bool | None],
) -> Checks:
    """Check a run's attestation: its signature, then every hash against the files on disk and the image."""
    checks = Checks()
    path = run_dir / ATTESTATION
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(
            f"no readable attestation at {path}", hint="envlock run writes one when a run ends"
        ) from exc
    statement = open_checked(document, key, run_dir / SIGNER, checks, str(path)).statement
    if statement.get("predicateType") != RUN_PREDICATE:
        raise VerificationError(f"{path} is not a run attestation ({statement.get('predicateType')})")
    predicate = statement.get("predicate") or {}
    for subject in statement.get("subject") or []:
        name = str(subject.get("name", ""))
        if name.startswith(".envlock/runs/"):
            continue  # the log stands in as the subject: checked with the run files below
        target = outputs_root / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            checks.mismatches.append(f"output {name}: not a path inside the project")
            continue
        found = sha256_file(target) if target.is_file() else None  # records hash each file of a directory
        checks.expect(f"output {name}", subject.get("digest", {}).get("sha256"), found)
    for relative, digest in sorted((predicate.get("run-files") or {}).items()):
        file = run_dir / relative
        checks.expect(f"run file {relative}", digest, sha256_file(file) if file.is_file() else None)
    lock_copy = run_dir / "envlock.lock"
    try:
        lock_hash = lockfile.read(lock_copy).lock_hash
    except EnvlockError:
        lock_hash = None
    checks.expect("lock copy's lock-hash", (predicate.get("lock") or {}).get("hash"), lock_hash)
    record = _record_json(run_dir)
    image = predicate.get("image") or {}
    for what, attested, key_name in (
        ("record: image ID", image.get("id"), "image_id"),
        ("record: lock hash", (predicate.get("lock") or {}).get("hash"), "lock_hash"),
        ("record: exit code", predicate.get("exit-code"), "exit_code"),
        ("record: command", predicate.get("command"), "command"),
        ("record: seed", predicate.get("seed"), "seed"),
        ("record: outputs", predicate.get("outputs"), "outputs"),
    ):
        checks.expect(what, attested, record.get(key_name))
    image_id = str(image.get("id") or "")
    present = image_present(image_id)
    if present is None:
        checks.unchecked.append(f"image {image_id[:19]}: not in the engine here (restore it to check it by ID)")
    elif present:
        checks.held.append(f"image {image_id[:19]} (by ID)")
    else:
        checks.mismatches.append(f"image {image_id[:19]}: what is here is another image")
    return checks


def verify_envelope_file(path: Path, key: PublicKey | None, image_present: Callable[[str], bool | None]) -> Checks:
    """A lone envelope: a run's (checked against the run folder it sits in) or an image's provenance."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"{path} is not a readable attestation") from exc
    checks = Checks()
    statement = open_checked(document, key, None, checks, str(path)).statement
    if statement.get("predicateType") == RUN_PREDICATE:
        run_dir = path.parent
        project = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir
        return verify_run_dir(run_dir, project, key=key, image_present=image_present)
    if statement.get("predicateType") != SLSA_PROVENANCE:
        raise VerificationError(f"{path}: unknown predicate {statement.get('predicateType')}")
    for subject in statement.get("subject") or []:
        if (subject.get("annotations") or {}).get("envlock:kind") != "config":
            checks.unchecked.append(f"subject {subject.get('name')}: a registry manifest (checked by `restore`)")
            continue
        image_id = "sha256:" + str(subject.get("digest", {}).get("sha256", ""))
        present = image_present(image_id)
        if present:
            checks.held.append(f"image {image_id[:19]} (by ID) is in the engine")
        elif present is None:
            checks.unchecked.append(f"image {image_id[:19]}: not in the engine here")
        else:
            checks.mismatches.append(f"image {image_id[:19]}: another image is here")
    return checks


def image_subjects(statement: dict[str, Any]) -> dict[str, str]:
    """An image statement's subjects by kind: {'config': 'sha256:…', 'manifest': 'sha256:…'}."""
    found = {}
    for subject in statement.get("subject") or []:
        kind = (subject.get("annotations") or {}).get("envlock:kind")
        digest = subject.get("digest", {}).get("sha256")
        if kind and digest:
            found[str(kind)] = "sha256:" + hex_of(str(digest))
    return found
