"""A run's attestation (in-toto Statement v1, predicate https://envlock.dev/run/v2, in a DSSE envelope) and its
verification against what is on disk.

What is signed is what is shown: the statement carries the whole run record (every fact envlock presents about a
run: commit, dirty flag, diff hash, untracked files and their content hashes, inputs manifest, host and GPUs,
image reference and digests, seed, determinism settings, passed variable names, outputs, exit status), the sha256
of every file the run keeps beside its record (lock copy, diff, log, saved outputs, verdict), and the outputs as
its subjects. Verification compares the record on disk with the signed one field by field, every file with its
hash, every saved untracked file's content with the hash the record names, and says who signed — a VERIFIED
verdict needs a signature by a key the verifier trusts (see trust.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envlock import __version__
from envlock.codecs import strict_json
from envlock.errors import EnvlockError, UnsignedError, UntrustedKeyError, VerificationError
from envlock.evidence.trust import Trust, TrustedKey
from envlock.fsutil import read_small_text, resolves_inside, sha256_file, unreadable
from envlock.git import own_git, prefix
from envlock.image.provenance import SLSA_PROVENANCE, hex_of
from envlock.lock import lockfile
from envlock.paths import ATTESTATION, LOCK_FILE, LOG_FILE, OUTPUTS_DIR, RECORD_FILE, SIGNER, ProjectLayout
from envlock.run.objects import ObjectStore
from envlock.safetar import name_problem
from envlock.signing import (
    STATEMENT_TYPE,
    SigningKey,
    envelope,
    load_public_key,
    open_envelope,
    signature_keyids,
    signed_by,
    write_envelope,
)

RUN_PREDICATE = "https://envlock.dev/run/v2"
OLD_RUN_PREDICATE = "https://envlock.dev/run/v1"  # covered a few record fields only: no longer accepted
# Files of a run folder that are not evidence of the run: the record (signed whole inside the statement), the
# attestation itself and the signer's key.
_RUNS = ProjectLayout(Path()).runs.as_posix()  # a run's folder as the statement names it: .envlock/runs
_NOT_BOUND = frozenset({RECORD_FILE, ATTESTATION, SIGNER})
# Slurm's own output of a submitted run's job (#SBATCH --output): Slurm still writes to it after the node's task has
# attested the run (the task's last lines), so it cannot be bound; the run's log.txt is the evidence.
_SLURM_OUTPUT = re.compile(r"^slurm-\d+\.out$")
OriginState = Literal["trusted", "unsigned", "untrusted", "unknown"]


def _record_json(run_dir: Path) -> dict[str, Any]:
    try:
        data = strict_json(read_small_text(run_dir / RECORD_FILE))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"the run record in {run_dir} is unreadable: {unreadable(exc)}") from exc
    if not isinstance(data, dict):
        raise VerificationError(f"the run record in {run_dir} is not a table")
    return data


def bound_files(run_dir: Path) -> list[str]:
    """The files the run keeps beside its record that its attestation binds (lock copy, diff, log, saved outputs,
    verdict…), relative to the run folder, sorted."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if (
            path.is_file()
            and not path.is_symlink()
            and relative not in _NOT_BOUND
            and not _SLURM_OUTPUT.match(relative)
            and not relative.startswith("nodes/")
        ):
            found.append(relative)
    return found


def unbound_files(run_dir: Path) -> list[str]:
    """The files of a run folder its attestation does not bind and that are not the record, the attestation or the
    signer's key (a multi-node run's nodes/, Slurm's output): a bundle carries none of them."""
    bound = set(bound_files(run_dir)) | _NOT_BOUND
    found = (path.relative_to(run_dir).as_posix() for path in sorted(run_dir.rglob("*")) if not path.is_dir())
    return [relative for relative in found if relative not in bound]


def run_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every file the attestation binds (bound_files)."""
    return {relative: sha256_file(run_dir / relative) for relative in bound_files(run_dir)}


def run_statement(run_dir: Path) -> dict[str, Any]:
    """The in-toto statement of a finished run, from its folder: the whole record, its files, its outputs."""
    record = _record_json(run_dir)
    outputs = {str(k): v for k, v in (record.get("outputs") or {}).items()}
    subject = [{"name": path, "digest": {"sha256": digest}} for path, digest in sorted(outputs.items()) if digest]
    files = run_files(run_dir)
    if not subject:  # a statement needs a subject: the run's log stands in when it declared no outputs
        subject = [
            {"name": f"{_RUNS}/{record.get('run_id')}/{LOG_FILE}", "digest": {"sha256": files.get(LOG_FILE, "")}}
        ]
    predicate = {
        "run-id": record.get("run_id"),
        "envlock-version": __version__,
        "record": record,
        "run-files": files,
    }
    if (subdir := project_subdir(run_dir, record)) is not None:
        predicate["project-subdir"] = subdir
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


def project_subdir(run_dir: Path, record: dict[str, Any]) -> str | None:
    """The project's folder in its repository (`sub/dir/`, or empty at the top; empty for a run outside git), where
    a bundle's code re-runs: signed, so that a bundle cannot point `reproduce` at another folder of the commit. None
    for a run folder that is not in a project's run store."""
    project = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir  # project/.envlock/runs/<id>
    if run_dir.parent != ProjectLayout(project).runs:
        return None
    commit = (record.get("git") or {}).get("commit") if isinstance(record.get("git"), dict) else None
    return prefix(own_git, project) if commit else ""


@dataclass(frozen=True)
class Origin:
    """Who vouches for a statement: a trusted key (by name), nobody (unsigned), or a key the verifier does not trust."""

    state: OriginState
    keyid: str | None = None
    name: str | None = None
    source: str | None = None

    def describe(self) -> str:
        """One phrase for people."""
        if self.state == "trusted":
            return f"signed by {self.name} (key {str(self.keyid)[:16]}, trusted: {self.source})"
        if self.state == "untrusted":
            return f"signed by key {str(self.keyid)[:16] or 'unknown'}, which is not trusted here"
        if self.state == "unsigned":
            return "unsigned"
        return "not opened"


@dataclass
class Checks:
    """What a verification found: what held, what did not (each named), what could not be checked, who signed,
    and the statement as signed (what a reviewer is shown)."""

    held: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    origin: Origin = field(default_factory=lambda: Origin("unknown"))
    statement: dict[str, Any] | None = None

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

    @property
    def signed_record(self) -> dict[str, Any] | None:
        """The run record as the statement carries it (None for an image's statement)."""
        predicate = (self.statement or {}).get("predicate") or {}
        record = predicate.get("record") if isinstance(predicate, dict) else None
        return record if isinstance(record, dict) else None

    def verdict(self, *, allow_unsigned: bool) -> str:
        """The verdict's name: VERIFIED, VERIFICATION FAILED, UNSIGNED, UNTRUSTED KEY <id>, or (allowed) HASHES
        HOLD, ORIGIN NOT VERIFIED."""
        if self.mismatches:
            return "VERIFICATION FAILED"
        if self.origin.state == "trusted":
            return "VERIFIED"
        if allow_unsigned:
            return "HASHES HOLD, ORIGIN NOT VERIFIED"
        if self.origin.state == "untrusted":
            return f"UNTRUSTED KEY {str(self.origin.keyid)[:16]}"
        return "UNSIGNED"

    def require(self, *, allow_unsigned: bool) -> str:
        """The verdict line when it may pass (exit 0); otherwise the error of its kind (26, 29 or 30)."""
        verdict = self.verdict(allow_unsigned=allow_unsigned)
        counts = f"{len(self.held)} checks held" + (f", {len(self.unchecked)} not checked" if self.unchecked else "")
        if verdict == "VERIFICATION FAILED":
            raise VerificationError(
                f"VERIFICATION FAILED: {len(self.mismatches)} mismatch(es): "
                + "; ".join(m.split(":")[0] for m in self.mismatches[:5])
            )
        if verdict == "UNSIGNED":
            raise UnsignedError(f"UNSIGNED: no signature, so nobody vouches for it ({counts})")
        if verdict.startswith("UNTRUSTED KEY"):
            raise UntrustedKeyError(
                f"{verdict}: signed by a key you do not trust ({counts})",
                hint="if you know whose key it is: envlock trust add PUB --name NAME (or pass --key PUB); "
                "a key shipped beside the evidence is never trusted for being there",
            )
        return f"{verdict}: {self.origin.describe()}; {counts}"


def _short(value: object) -> str:
    text = "absent" if value is None else str(value)
    return text[:19] if text.startswith("sha256:") else text[:64]


def open_checked(document: object, trust: Trust, beside: Path | None, checks: Checks, where: str) -> dict[str, Any]:
    """Open the envelope and say who signed it: a trusted key, a key that is not trusted (named by the key beside
    it when that key's signature holds, else by the id the signature declares), or nobody."""
    statement = open_envelope(document, None, where).statement
    if not isinstance(document, dict):  # open_envelope refused anything else; this tells the type checker
        raise VerificationError(f"{where} is not a DSSE envelope")
    declared = [k for k in signature_keyids(document) if k]
    if not document.get("signatures"):
        checks.origin = Origin("unsigned")
        return statement
    trusted = signed_by(document, [k.key for k in trust.keys])
    if trusted is not None:
        found = trust.find(trusted.keyid) or TrustedKey(trusted, trusted.keyid[:16], "--key")
        checks.origin = Origin("trusted", found.keyid, found.name, found.source)
        checks.held.append(f"{where}: signature by {found.name} ({found.keyid[:16]}), trusted: {found.source}")
        return statement
    claimed = [k for k in trust.keys if k.keyid in declared]
    if claimed:
        checks.mismatches.append(f"{where}: the signature claims trusted key {claimed[0].name} but does not hold")
    keyid = declared[0] if declared else None
    if beside is not None and beside.is_file():
        try:
            shipped = load_public_key(beside)
            keyid = shipped.keyid if signed_by(document, [shipped]) is not None else keyid
        except EnvlockError:
            pass  # a damaged key beside names nobody
    checks.origin = Origin("untrusted", keyid)
    return statement


def _flat(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaves by their path of keys (a tuple: `{"a": {"b": 1}}` and `{"a.b": 1}` are two records, not one)."""
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            out.update(_flat(item, (*prefix, str(key))))
        return out
    return {prefix: value}


def _same(a: object, b: object) -> bool:
    """Equal as JSON, type included: 0 is not false, 1 is not 1.0 (Python's == says they are)."""
    if a is _ABSENT or b is _ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def record_differences(signed: Mapping[str, Any], on_disk: Mapping[str, Any]) -> list[str]:
    """Each field of the record that differs from the signed one: `record git.commit: signed …, on disk …`."""
    before, after = _flat(dict(signed)), _flat(dict(on_disk))
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if not _same(before.get(key, _ABSENT), after.get(key, _ABSENT)):
            lines.append(
                f"record {'.'.join(key)}: signed {_value(before.get(key, _ABSENT))}, "
                f"on disk {_value(after.get(key, _ABSENT))}"
            )
    return lines


_ABSENT = object()


def _value(value: object) -> str:
    if value is _ABSENT:
        return "(absent)"
    if value is None:
        return "none"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "…"


@dataclass(frozen=True)
class RunPlaces:
    """Where a run's evidence lies: its folder, the root its outputs are relative to, the saved untracked
    objects, and (a bundle) copies of its inputs."""

    run_dir: Path
    outputs_root: Path
    objects_root: Path
    inputs_root: Path | None = None
    outputs_left_out: frozenset[str] = frozenset()  # outputs a bundle names by digest only (too large to carry)
    run_id: str | None = None  # the run the place says it holds (its folder's name): the signed record must agree

    @classmethod
    def of_project(cls, project_dir: Path, run_dir: Path) -> RunPlaces:
        """A run of a project, where it was made."""
        return cls(run_dir, project_dir, ProjectLayout(project_dir).objects, run_id=run_dir.name)


def verify_run_dir(places: RunPlaces, *, trust: Trust, image_present: Callable[[str], bool | None]) -> Checks:
    """Check a run's attestation: who signed, then the record field by field, every file, saved untracked
    object, output and input against its hash, and the image by ID."""
    checks = Checks()
    run_dir = places.run_dir
    path = run_dir / ATTESTATION
    try:
        document = strict_json(read_small_text(path))
    except (OSError, ValueError) as exc:
        raise VerificationError(
            f"no readable attestation at {path} ({unreadable(exc)})",
            hint="every run that ends is attested; envlock attest RUN makes one",
        ) from exc
    statement = open_checked(document, trust, run_dir / SIGNER, checks, "attestation")
    if statement.get("predicateType") == OLD_RUN_PREDICATE:
        raise VerificationError(
            f"{path} is a run/v1 attestation: it does not cover the whole record",
            hint="re-attest the run where it was made (envlock attest RUN --key …) and check the record first",
        )
    if statement.get("predicateType") != RUN_PREDICATE:
        raise VerificationError(f"{path} is not a run attestation ({statement.get('predicateType')})")
    _check_shape(statement, path)
    checks.statement = statement
    predicate = statement["predicate"]
    signed = predicate["record"]
    checks.mismatches += record_differences(signed, _record_json(run_dir))
    if not any(m.startswith("record ") for m in checks.mismatches):
        checks.held.append(f"record: every field as signed ({len(_flat(signed))} fields)")
    checks.expect("statement: run id", signed.get("run_id"), predicate.get("run-id"))
    if places.run_id is not None:  # a copy of another run's folder (record, attestation, files) is not this run
        checks.expect("run id", signed.get("run_id"), places.run_id)
    if signed.get("reproduces"):  # a re-run's outputs were written in a worktree: its folder keeps them
        places = RunPlaces(run_dir, run_dir / "outputs", places.objects_root, places.inputs_root, run_id=places.run_id)
    _check_subject_list(statement, predicate, checks)
    _check_subjects(statement, places, checks)
    _check_run_files(predicate, run_dir, checks)
    _check_kept_outputs(signed, predicate, checks)
    _check_objects(signed, places.objects_root, checks)
    if places.inputs_root is not None:
        _check_inputs(signed, places.inputs_root, checks)
    lock_copy = run_dir / LOCK_FILE
    try:
        lock_hash = lockfile.read(lock_copy).lock_hash
    except EnvlockError:
        lock_hash = None
    checks.expect("lock copy's lock-hash", signed.get("lock_hash"), lock_hash)
    _check_image(str(signed.get("image_id") or ""), image_present, checks)
    return checks


def _check_shape(statement: dict[str, Any], path: Path) -> None:
    """The statement's parts have the types verification reads (a crafted one is refused, not a traceback)."""
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    problems = []
    if not isinstance(predicate, dict) or not isinstance(predicate.get("record"), dict):
        problems.append("no run record")
    elif not isinstance(predicate.get("run-files"), dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in predicate["run-files"].items()
    ):
        problems.append("'run-files' is not a table of sha256 digests")
    if not isinstance(subjects, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict) for s in subjects
    ):
        problems.append("'subject' is not a list of named digests")
    if problems:
        raise VerificationError(f"{path}: a malformed run statement ({'; '.join(problems)})")


def _check_subject_list(statement: dict[str, Any], predicate: dict[str, Any], checks: Checks) -> None:
    """The subjects (what in-toto tools check) are the signed record's outputs (what envlock shows), or the log
    standing in for a run without any: one list, never two that a signer could make disagree."""
    signed = predicate["record"]
    outputs = signed.get("outputs") if isinstance(signed.get("outputs"), dict) else {}
    expected = {str(path): digest for path, digest in outputs.items() if digest}
    if not expected:
        log = f"{_RUNS}/{signed.get('run_id')}/{LOG_FILE}"
        expected = {log: predicate["run-files"].get(LOG_FILE, "")}
    subjects = statement["subject"]
    declared = {s["name"]: s["digest"].get("sha256") for s in subjects}
    if len(declared) != len(subjects):
        checks.mismatches.append("subject: a name given twice")
    for name in sorted(expected.keys() | declared.keys()):
        if not _same(expected.get(name), declared.get(name)):
            checks.mismatches.append(
                f"subject {name}: the signed record names {_short(expected.get(name))}, "
                f"the subject {_short(declared.get(name))}"
            )


def _check_subjects(statement: dict[str, Any], places: RunPlaces, checks: Checks) -> None:
    for subject in statement.get("subject") or []:
        name = str(subject.get("name", ""))
        if name.startswith(f"{_RUNS}/"):
            continue  # the log stands in as the subject: checked with the run files
        if ".." in Path(name).parts or Path(name).is_absolute():
            checks.mismatches.append(f"output {name}: not a path inside the project")
            continue
        target = places.outputs_root / name
        present = target.is_file() and not target.is_symlink()
        if not present and name in places.outputs_left_out:
            checks.unchecked.append(f"output {name}: published by digest only (too large to carry)")
            continue
        found = sha256_file(target) if present else None
        checks.expect(f"output {name}", subject.get("digest", {}).get("sha256"), found)


def _check_run_files(predicate: dict[str, Any], run_dir: Path, checks: Checks) -> None:
    attested = predicate.get("run-files") or {}
    for relative, digest in sorted(attested.items()):
        if name_problem(relative) or not resolves_inside(run_dir, relative):  # nothing outside the run is read
            checks.mismatches.append(f"run file {relative}: not a file inside the run's folder")
            continue
        file = run_dir / relative
        ok = file.is_file() and not file.is_symlink()
        checks.expect(f"run file {relative}", digest, sha256_file(file) if ok else None)
    for relative in sorted(set(bound_files(run_dir)) - set(attested)):  # names only: the attested were hashed
        checks.mismatches.append(f"run file {relative}: not in the attestation (added after it was made)")


def _check_kept_outputs(signed: dict[str, Any], predicate: dict[str, Any], checks: Checks) -> None:
    """Each output's copy kept in the run folder (what a reproduction compares values with) is that output: the
    sha256 the signed record names for it."""
    found = signed.get("outputs")
    outputs: dict[str, Any] = found if isinstance(found, dict) else {}
    for relative, digest in sorted(predicate["run-files"].items()):
        if relative.startswith(f"{OUTPUTS_DIR}/"):
            name = relative.removeprefix(f"{OUTPUTS_DIR}/")
            if not _same(outputs.get(name), digest):
                checks.mismatches.append(
                    f"run file {relative}: not the output {name} the record names ({_short(outputs.get(name))})"
                )


def _check_objects(signed: dict[str, Any], objects_root: Path, checks: Checks) -> None:
    """Each saved untracked file's content against the sha256 the signed record names for it."""
    saved = (signed.get("git") or {}).get("untracked-saved") or {}
    if not isinstance(saved, dict):
        return
    store = ObjectStore(objects_root)
    for name, digest in sorted(saved.items()):
        try:
            present = store.path(str(digest)).is_file()
        except ValueError:
            checks.mismatches.append(f"untracked {name}: {digest!r} is not a sha256")
            continue
        if not present:
            checks.unchecked.append(f"untracked {name}: its saved copy is not here")
        elif store.get(str(digest)) is None:
            checks.mismatches.append(f"untracked {name}: its saved copy does not hash to {str(digest)[:12]}")
        else:
            checks.held.append(f"untracked {name} (content)")


def _check_inputs(signed: dict[str, Any], inputs_root: Path, checks: Checks) -> None:
    """Bundled copies of the inputs against the signed manifest."""
    files = (signed.get("inputs") or {}).get("files") or {}
    for name, digest in sorted(files.items() if isinstance(files, dict) else ()):
        target = inputs_root / str(name)
        if ".." in Path(str(name)).parts or Path(str(name)).is_absolute():
            checks.mismatches.append(f"input {name}: not a path inside the project")
        elif target.is_file() and not target.is_symlink():
            checks.expect(f"input {name}", digest, sha256_file(target))
        else:
            checks.unchecked.append(f"input {name}: not in the bundle (bundle --with-inputs)")


def _check_image(image_id: str, image_present: Callable[[str], bool | None], checks: Checks) -> None:
    present = image_present(image_id)
    if present is None:
        checks.unchecked.append(f"image {image_id[:19]}: not in the engine here (restore it to check it by ID)")
    elif present:
        checks.held.append(f"image {image_id[:19]} (by ID)")
    else:
        checks.mismatches.append(f"image {image_id[:19]}: what is here is another image")


def verify_envelope_file(path: Path, trust: Trust, image_present: Callable[[str], bool | None]) -> Checks:
    """A lone envelope: a run's (checked against the run folder it sits in) or an image's provenance."""
    try:
        document = strict_json(read_small_text(path))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"{path} is not a readable attestation") from exc
    checks = Checks()
    statement = open_checked(document, trust, None, checks, str(path))
    if statement.get("predicateType") in (RUN_PREDICATE, OLD_RUN_PREDICATE):
        run_dir = path.parent
        project = run_dir.parents[2] if len(run_dir.parents) > 2 else run_dir
        return verify_run_dir(RunPlaces.of_project(project, run_dir), trust=trust, image_present=image_present)
    if statement.get("predicateType") != SLSA_PROVENANCE:
        raise VerificationError(f"{path}: unknown predicate {statement.get('predicateType')}")
    checks.statement = statement
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
