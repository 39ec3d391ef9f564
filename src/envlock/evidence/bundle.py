"""A portable bundle of one run: everything an independent party needs to verify it and to reproduce it.

One tar file:

    bundle.json             what is inside, each file's sha256, the run id, the commit, the project's folder in
                            the repository, the image (ID, registry digests, archive or not)
    run/                    the run's folder: record.json, envlock.lock, attestation.dsse.json (+ the signer's
                            public key), log.txt, diff.patch, saved metrics, … (all of it)
    sbom.cdx.json           the CycloneDX SBOM of the lock copy, for the run's platform
    image.dsse.json         the image's provenance, when the project has it
    code.gitbundle          `git bundle` of the recorded commit (absent outside git)
    objects/                saved copies of untracked files the record names (by sha256)
    outputs/<path>          the declared outputs as they are now (verify compares them with the attestation);
                            those over a size cap (`envlock push`) are left out, listed in bundle.json's
                            "outputs-by-digest" (the signed record still names their sha256)
    inputs/<path>           the inputs, with --with-inputs
    image.tar               the image (`docker save`, verified by ID), with --with-image
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from envlock.codecs import project_path_problem, strict_json
from envlock.engine.docker import Engine
from envlock.errors import BundleError, RerunError, UsageError, VerificationError
from envlock.evidence.attest import (
    Checks,
    RunPlaces,
    attest_run,
    image_subjects,
    open_checked,
    unbound_files,
    verify_run_dir,
)
from envlock.evidence.trust import Trust
from envlock.fsutil import (
    atomic_write_text,
    copy_confined,
    make_dirs_confined,
    read_small_text,
    resolves_inside,
    sha256_file,
)
from envlock.git import bundle_commit, bundle_heads, checkout_bundle, own_git, prefix
from envlock.image.provenance import attestation_path
from envlock.image.restore import verify_archive, write_archive_file
from envlock.image.sbom import sbom_json
from envlock.lock import lockfile
from envlock.paths import ATTESTATION, LOCK_FILE, NODES_DIR, STATE_DIR, ProjectLayout
from envlock.run.records import FINAL, RunRecord, RunStore, is_run_id
from envlock.safetar import extract, name_problem
from envlock.signing import SigningKey

BUNDLE_VERSION = 1
MANIFEST = "bundle.json"


_MAX_MANIFEST_BYTES = 256 << 20
_MAX_NAMED = 1_000_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX_COMMIT = re.compile(r"[0-9a-f]{7,64}")


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _safe(name: str) -> bool:
    path = Path(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts


def make_bundle(
    project_dir: Path,
    run_id: str,
    out: Path,
    *,
    engine: Callable[[], Engine],
    with_image: bool = False,
    with_inputs: bool = False,
    key: SigningKey | None = None,
    max_output_bytes: int | None = None,
) -> dict[str, Any]:
    """Write the run's bundle to `out` (atomically); returns its manifest. A run without an attestation (made
    before envlock wrote them) gets one now, signed with `key` when given; outputs over `max_output_bytes` are
    named by digest only."""
    store = RunStore(project_dir)
    record = store.load(run_id)
    run_dir = store.directory(record.run_id)
    if record.status not in FINAL:
        raise UsageError(f"run {record.run_id} is still {record.status}", hint=f"envlock runs wait {record.run_id}")
    if not (run_dir / ATTESTATION).is_file():
        attest_run(run_dir, key)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".envlock-bundle-", dir=out.parent) as tmp:
        stage = Path(tmp) / "bundle"
        _stage_run(project_dir, run_dir, record, stage)
        commit = record.git.commit if record.git else None
        subdir = _stage_code(project_dir, commit, record.run_id, stage) if commit else ""
        _stage_untracked(project_dir, record, stage)
        by_digest = _stage_outputs(project_dir, record, stage, max_output_bytes)
        if with_inputs:
            _stage_inputs(project_dir, record, stage)
        if with_image:
            write_archive_file(engine(), record.image_id, stage / "image.tar")
        manifest = _manifest(record, stage, commit, subdir, with_image=with_image)
        if by_digest:
            manifest["outputs-by-digest"] = by_digest
        atomic_write_text(stage / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _write_tar(stage, out)
    return manifest


def _stage_run(project_dir: Path, run_dir: Path, record: RunRecord, stage: Path) -> None:
    """The run's folder (less the nodes' own), the lock's SBOM for the run's platform, the image's provenance."""
    # Only what the attestation binds (and the record, the attestation, the signer's key): not the nodes' own
    # folders, not Slurm's output of the job (written on after the run was attested).
    left_out = {NODES_DIR, *unbound_files(run_dir)}

    def unbound(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if (Path(folder) / n).relative_to(run_dir).as_posix() in left_out]

    shutil.copytree(run_dir, stage / "run", ignore=unbound)
    lock = lockfile.read(run_dir / LOCK_FILE)
    (stage / "sbom.cdx.json").write_text(sbom_json(lock, record.platform), encoding="utf-8")
    provenance = attestation_path(project_dir, record.image_id)
    if provenance.is_file():
        _copy(provenance, stage / "image.dsse.json")


def _stage_code(project_dir: Path, commit: str, run_id: str, stage: Path) -> str:
    """`git bundle` of the recorded commit; returns the project's folder in the repository."""
    subdir = prefix(own_git, project_dir)
    bundle_commit(project_dir, commit, run_id, stage / "code.gitbundle")
    return subdir


def _stage_untracked(project_dir: Path, record: RunRecord, stage: Path) -> None:
    """The saved copies of the untracked files the record names, by sha256 (each one checked on reading)."""
    for digest in sorted(set(record.git.saved.values()) if record.git else ()):
        source = ProjectLayout(project_dir).objects / "sha256" / digest[:2] / digest
        if source.is_file():
            _copy(source, stage / "objects" / "sha256" / digest[:2] / digest)


def _stage_outputs(project_dir: Path, record: RunRecord, stage: Path, max_bytes: int | None) -> dict[str, str]:
    """The declared outputs the run produced, as they are now; returns those left out for their size (by digest)."""
    left_out = {}
    for path, digest in sorted(record.outputs.items()):
        if digest and _safe(path) and (project_dir / path).is_file():
            if max_bytes is not None and (project_dir / path).stat().st_size > max_bytes:
                left_out[path] = digest
                continue
            _copy(project_dir / path, stage / "outputs" / path)
    return left_out


def _stage_inputs(project_dir: Path, record: RunRecord, stage: Path) -> None:
    """The input files the record names (--with-inputs)."""
    for path in sorted(record.inputs.files if record.inputs else ()):
        if _safe(path) and (project_dir / path).is_file():
            _copy(project_dir / path, stage / "inputs" / path)


def _manifest(record: RunRecord, stage: Path, commit: str | None, subdir: str, *, with_image: bool) -> dict[str, Any]:
    """bundle.json: the run, the code, the image, and the sha256 of every file staged so far."""
    contents = {p.relative_to(stage).as_posix(): sha256_file(p) for p in sorted(stage.rglob("*")) if p.is_file()}
    return {
        "bundle-version": BUNDLE_VERSION,
        "run-id": record.run_id,
        "commit": commit,
        "project-subdir": subdir,
        "image": {
            "id": record.image_id,
            "reference": record.image_reference,
            "digests": list(record.repo_digests),
            "archive": "image.tar" if with_image else None,
        },
        "contents": contents,
    }


def _write_tar(stage: Path, out: Path) -> None:
    """The staged bundle as one tar, the manifest first, written beside `out` and moved into place."""
    partial = out.with_name(f".{out.name}.partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        for member in [
            stage / MANIFEST,
            *sorted(p for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST),
        ]:
            archive.add(member, arcname=member.relative_to(stage).as_posix(), recursive=False)
    partial.replace(out)


@dataclass(frozen=True)
class Unpacked:
    """A bundle unpacked: its folder and manifest."""

    root: Path
    manifest: dict[str, Any]

    @property
    def run_id(self) -> str:
        """The bundled run's id."""
        return str(self.manifest["run-id"])

    @property
    def archive(self) -> Path | None:
        """The image archive, when bundled."""
        name = (self.manifest.get("image") or {}).get("archive")
        return self.root / name if name else None


@contextlib.contextmanager
def unpacked(bundle: Path) -> Iterator[Unpacked]:
    """Unpack into a temporary folder with envlock's own tar reader (regular files and folders, safe names, size
    caps: envlock.safetar), check bundle.json's shape, then every file's sha256 against it."""
    with tempfile.TemporaryDirectory(prefix="envlock-bundle-") as tmp:
        root = Path(tmp)
        files = {member.name for member in extract(bundle, root) if member.kind == "file"}
        manifest = _read_manifest(bundle, root)
        contents: dict[str, str] = manifest["contents"]
        problems = [
            name for name, digest in contents.items() if name not in files or sha256_file(root / name) != digest
        ]
        problems += [name for name in files if name != MANIFEST and name not in contents]
        if problems:
            raise VerificationError(
                f"{bundle}: {len(problems)} file(s) differ from the bundle's own list: "
                + ", ".join(sorted(problems)[:5])
            )
        yield Unpacked(root, manifest)


def _read_manifest(bundle: Path, root: Path) -> dict[str, Any]:
    """bundle.json, its shape checked before any of it is used (one BundleError naming every problem)."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: has no {MANIFEST}: not an envlock bundle", hint="make one with `envlock bundle`")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{bundle}: {MANIFEST} is over {_MAX_MANIFEST_BYTES} bytes: not a manifest")
    try:
        manifest = strict_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError
        raise BundleError(f"{bundle}: {MANIFEST} is not JSON ({exc})") from exc
    problems = _manifest_problems(manifest)
    if problems:
        raise BundleError(f"{bundle}: {MANIFEST} is malformed: " + "; ".join(problems[:5]))
    return dict(manifest)


def _manifest_problems(manifest: object) -> list[str]:
    """What is wrong with bundle.json's shape: the run id names a folder, file names are safe, digests are hex."""
    if not isinstance(manifest, dict):
        return ["it is not a table"]
    version, run_id, commit = manifest.get("bundle-version"), manifest.get("run-id"), manifest.get("commit")
    subdir, image, contents = manifest.get("project-subdir", ""), manifest.get("image"), manifest.get("contents")
    problems = []
    if type(version) is not int or version != BUNDLE_VERSION:
        problems.append(f"'bundle-version' is {version!r}, not {BUNDLE_VERSION}")
    if not isinstance(run_id, str) or not is_run_id(run_id):
        problems.append(f"'run-id' {run_id!r} is not a run id")
    if commit is not None and not (isinstance(commit, str) and _HEX_COMMIT.fullmatch(commit)):
        problems.append(f"'commit' {commit!r} is not a hex commit")
    if not isinstance(subdir, str) or (subdir and name_problem(subdir.removesuffix("/"))):
        problems.append(f"'project-subdir' {subdir!r} is not a safe relative folder")
    if not isinstance(contents, dict) or not contents:
        problems.append("'contents' is not a table of files")
        contents = {}
    for key in ("contents", "outputs-by-digest"):
        table = manifest.get(key, {}) if key != "contents" else contents
        if not isinstance(table, dict):
            problems.append(f"'{key}' is not a table of files")
            continue
        for name, digest in list(table.items())[:_MAX_NAMED]:
            problem = name_problem(name) if isinstance(name, str) else "a name that is not a string"
            if problem:
                problems.append(f"'{key}' names {name!r}: {problem}")
            elif not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                problems.append(f"'{key}' gives {name!r} the digest {digest!r} (not 64 hex)")
    return problems + _image_problems(image, contents)


def _image_problems(image: object, contents: dict[str, Any]) -> list[str]:
    if not isinstance(image, dict):
        return ["'image' is not a table"]
    problems = []
    if not isinstance(image.get("id"), str):
        problems.append(f"'image.id' {image.get('id')!r} is not a string")
    if image.get("reference") is not None and not isinstance(image.get("reference"), str):
        problems.append("'image.reference' is not a string")
    digests = image.get("digests", [])
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        problems.append("'image.digests' is not a list of strings")
    archive = image.get("archive")
    if archive is not None and (not isinstance(archive, str) or archive not in contents):
        problems.append(f"'image.archive' {archive!r} is not a file the bundle lists")
    return problems


def verify_bundle(bundle: Path, trust: Trust, engine: Callable[[], Engine | None]) -> Checks:
    """Verify a bundle alone: the run's attestation (who signed, the record field by field) against the bundled
    files, saved untracked files, outputs and inputs; the SBOM against the lock copy; the image provenance against
    the signed record; the image archive (when bundled) by ID; the git bundle's commit. Keys inside the bundle are
    never trusted: only `trust`."""
    with unpacked(bundle) as found:
        return verify_unpacked(found, trust, engine)


def verify_unpacked(found: Unpacked, trust: Trust, engine: Callable[[], Engine | None]) -> Checks:
    """verify_bundle on a bundle already unpacked (reproduce verifies the very files it then rebuilds from)."""
    root = found.root
    archive = found.archive

    def image_present(wanted: str) -> bool | None:
        if archive is not None:
            return verify_archive(archive) == wanted
        current = engine()
        return None if current is None or current.image_id(wanted) is None else True

    # Outputs published by digest only (over `envlock push`'s size cap) are not here to hash: not checked, never
    # held; the list is the bundle's own (unsigned), so it can only make a check weaker, never make one pass.
    left_out = frozenset(found.manifest.get("outputs-by-digest") or {})
    places = RunPlaces(root / "run", root / "outputs", root / "objects", root / "inputs", left_out)
    checks = verify_run_dir(places, trust=trust, image_present=image_present)
    checks.held.insert(0, f"bundle: {len(found.manifest.get('contents') or {})} files match bundle.json")
    checks.mismatches += [
        f"run file {name}: not in the attestation (a bundle carries none)" for name in unbound_files(root / "run")
    ]
    signed = checks.signed_record or {}
    checks.expect("bundle.json: run id", signed.get("run_id"), found.manifest.get("run-id"))
    checks.mismatches += _unnamed_objects(root / "objects", signed)
    checks.mismatches += _unaccounted(found, signed)
    image_id = str(signed.get("image_id") or "")
    checks.expect("bundle.json: image ID", image_id, (found.manifest.get("image") or {}).get("id"))
    lock = lockfile.read(root / "run" / LOCK_FILE)
    checks.expect(
        "sbom.cdx.json (remade from the lock copy)",
        sbom_json(lock, str(signed.get("platform"))),
        (root / "sbom.cdx.json").read_text(encoding="utf-8") if (root / "sbom.cdx.json").is_file() else None,
    )
    _check_provenance(root / "image.dsse.json", trust, image_id, lock.lock_hash, checks)
    predicate = (checks.statement or {}).get("predicate") or {}
    if "project-subdir" in predicate:  # where the code re-runs: a bundle may not point reproduce elsewhere
        checks.expect(
            "bundle.json: project folder in the repository",
            predicate["project-subdir"],
            found.manifest.get("project-subdir") or "",
        )
    else:
        checks.unchecked.append("bundle.json: project folder in the repository (attested before envlock signed it)")
    commit = (signed.get("git") or {}).get("commit")
    checks.expect("bundle.json: commit", commit, found.manifest.get("commit"))
    if commit:
        listed = bundle_heads(root / "code.gitbundle")
        checks.expect("code.gitbundle: the signed commit", commit, commit if commit in listed else None)
    else:
        checks.unchecked.append("code: the run was not in a git repository")
    return checks


def _unnamed_objects(objects: Path, signed: dict[str, Any]) -> list[str]:
    """Saved copies the bundle carries that the signed record does not name (their content is checked by nobody,
    and a pull would put them into the receiver's content-addressed store)."""
    git = signed.get("git")
    saved = git.get("untracked-saved") if isinstance(git, dict) else None
    named = {str(digest) for digest in saved.values()} if isinstance(saved, dict) else set()
    carried = sorted(p.relative_to(objects.parent).as_posix() for p in objects.rglob("*") if not p.is_dir())
    return [
        f"{name}: a saved copy the signed record does not name" for name in carried if name.split("/")[-1] not in named
    ]


_OWN_FILES = frozenset({MANIFEST, "sbom.cdx.json", "image.dsse.json", "code.gitbundle"})


def _unaccounted(found: Unpacked, signed: dict[str, Any]) -> list[str]:
    """Files the bundle carries that no check covers: besides its own files, the run's folder and saved copies
    (checked on their own), only the signed record's outputs, its inputs' files and the image archive belong."""
    outputs, inputs = signed.get("outputs"), signed.get("inputs")
    listed = inputs.get("files") if isinstance(inputs, dict) else None
    files: dict[str, Any] = listed if isinstance(listed, dict) else {}
    archive = (found.manifest.get("image") or {}).get("archive")
    declared = outputs if isinstance(outputs, dict) else {}
    named = {*_OWN_FILES, *(f"outputs/{p}" for p in declared), *(f"inputs/{p}" for p in files), archive}
    carried = sorted(str(name) for name in found.manifest.get("contents") or {})
    return [
        f"bundle file {name}: nothing signed names it"
        for name in carried
        if name not in named and not name.startswith(("run/", "objects/"))
    ]


def _check_provenance(path: Path, trust: Trust, image_id: str, lock_hash: str, checks: Checks) -> None:
    """The bundled image provenance: about the signed record's image and lock, and who vouches for it."""
    if not path.is_file():
        checks.unchecked.append("image provenance: not in the bundle")
        return
    try:
        document = strict_json(read_small_text(path))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"the bundle's image.dsse.json is not JSON: {exc}") from exc
    seen = Checks()
    statement = open_checked(document, trust, None, seen, "image.dsse.json")
    checks.mismatches += seen.mismatches
    if seen.origin.state == "trusted":
        checks.held += seen.held
    else:
        checks.unchecked.append(f"image provenance: {seen.origin.describe()}: its origin is not verified")
    subjects = image_subjects(statement)
    checks.expect("image provenance: subject image ID", image_id, subjects.get("config"))
    predicate = statement.get("predicate")
    build = predicate.get("buildDefinition") if isinstance(predicate, dict) else None
    parameters = build.get("externalParameters") if isinstance(build, dict) else None
    checks.expect(
        "image provenance: lock hash", lock_hash, parameters.get("lock-hash") if isinstance(parameters, dict) else None
    )


# What a bundle's names may look like before anything is rebuilt from them.
_OBJECT_NAME = re.compile(r"objects/sha256/([0-9a-f]{2})/(\1[0-9a-f]{62})")
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A bundle's folder names the receiver's git or envlock state would read as their own.
_RESERVED = (".git", STATE_DIR)


def _reserved(name: str) -> str | None:
    """The first component of `name` that is a .git or .envlock folder's name (any case), or None."""
    for part in PurePosixPath(name).parts:
        if part.lower() in _RESERVED:
            return part
    return None


def check_names(found: Unpacked) -> str:
    """Refuse (BundleError) a bundle whose run id, commit, image ID, project folder or file names are not of the
    shapes envlock writes, before any of them is used as a path; returns the run id."""
    manifest = found.manifest
    run_id = manifest.get("run-id")
    if not is_run_id(run_id):
        raise BundleError(f"refused: the bundle's run id {run_id!r} is not a run id (like 20261126T075012Z-3f9a1c)")
    commit = manifest.get("commit")
    if commit is not None and not (isinstance(commit, str) and _COMMIT.fullmatch(commit)):
        raise BundleError(f"refused: the bundle's commit {commit!r} is not a git object name")
    image_id = (manifest.get("image") or {}).get("id") if isinstance(manifest.get("image"), dict) else None
    if not (isinstance(image_id, str) and _IMAGE_ID.fullmatch(image_id)):
        raise BundleError(f"refused: the bundle's image ID {image_id!r} is not sha256:<64 hex>")
    subdir = manifest.get("project-subdir") or ""
    if not isinstance(subdir, str) or (subdir and (not _safe(subdir) or _reserved(subdir))):
        raise BundleError(f"refused: the bundle names an unsafe project folder {subdir!r}")
    for name in sorted(manifest.get("contents") or {}):
        if part := _reserved(name):
            raise BundleError(f"refused: {name} in the bundle has a {part} component (never written there)")
        if name.startswith("objects/") and not _OBJECT_NAME.fullmatch(name):
            raise BundleError(f"refused: {name} in the bundle is not a saved object's name (objects/sha256/ab/<hex>)")
    return str(run_id)


def project_from_bundle(found: Unpacked, repo: Path) -> Path:
    """A project folder rebuilt from the bundle in `repo` (an empty folder): the git bundle cloned with hooks off,
    the run's folder, saved objects and inputs written where the project keeps them, never through a link.
    Returns the project directory."""
    run_id = check_names(found)
    commit = found.manifest.get("commit")
    if not commit:
        raise RerunError("the bundled run was not in a git repository: its code is not in the bundle")
    checkout_bundle(found.root / "code.gitbundle", repo, str(commit))
    subdir = str(found.manifest.get("project-subdir") or "")
    project = make_dirs_confined(repo, subdir) if subdir else repo
    if (project / STATE_DIR).exists() or (project / STATE_DIR).is_symlink():
        raise BundleError(f"refused: the bundle's code carries its own {STATE_DIR} (envlock's state is never code)")
    layout = ProjectLayout(project)
    copy_confined(found.root / "run", project, _under(layout.runs / run_id, project))
    record = RunStore(project).load(run_id)
    if (found.root / "objects").is_dir():
        copy_confined(found.root / "objects", project, _under(layout.objects, project))
    declared = _confined_inputs(project, record)
    if (found.root / "inputs").is_dir():
        _copy_inputs(found.root / "inputs", project, declared)
    if (found.root / "image.dsse.json").is_file():
        image_id = str(found.manifest["image"]["id"])
        copy_confined(found.root / "image.dsse.json", project, _under(attestation_path(project, image_id), project))
    return project


def _under(path: Path, project: Path) -> str:
    return path.relative_to(project).as_posix()


def _confined_inputs(project: Path, record: RunRecord) -> list[str]:
    """The run's declared inputs, each of which must stay inside the rebuilt project, links followed (the engine
    mounts what they resolve to: a committed link to a host file would put that file into the container)."""
    declared = [path.rstrip("/") for path in (record.inputs.paths if record.inputs else ())]
    for path in declared:
        if project_path_problem(path) is not None or not resolves_inside(project, path):
            raise BundleError(
                f"refused: input {path} leads out of the rebuilt project ({project})",
                hint="a bundle's inputs are mounted only from inside its own folder",
            )
    return declared


def _copy_inputs(inputs: Path, project: Path, declared: list[str]) -> None:
    """The bundled inputs into the project, only under the paths the record declares, never through a link."""
    for file in sorted(p for p in inputs.rglob("*") if not p.is_dir()):
        name = file.relative_to(inputs).as_posix()
        if not any(name == path or name.startswith(f"{path}/") for path in declared):
            raise BundleError(f"refused: inputs/{name} in the bundle is not under an input the run declares")
        copy_confined(file, project, name)


@dataclass(frozen=True)
class Reproduction:
    """A bundle's project rebuilt in a folder the receiver keeps, and what the re-run needs from the bundle."""

    folder: Path
    project: Path
    run_id: str
    archives: tuple[Path, ...]
    verified: str  # the verification's verdict line (VERIFIED, or HASHES HOLD, ORIGIN NOT VERIFIED when allowed)


def reproduction_folder(keep: Path) -> Path:
    """`keep` made (or an empty one taken); an existing folder with anything in it is refused."""
    if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise UsageError(
            f"{keep} already exists and is not an empty folder: a reproduction is rebuilt in a new one",
            hint="name another folder with --keep DIR",
        )
    keep.mkdir(parents=True, exist_ok=True)
    return keep


@contextlib.contextmanager
def reproducible(
    bundle: Path, keep: Path | None, *, parent: Path, gate: Callable[[Unpacked], str]
) -> Iterator[Reproduction]:
    """`envlock reproduce BUNDLE`: the bundle unpacked, its names checked, then `gate` (its verification under the
    receiver's trust: raises, or gives the verdict line), and only then the project rebuilt from the very files
    verified, in `keep` (default: parent/envlock-reproduction-<run id>), which stays; the unpacked bundle (the image
    archive to restore from) lasts for the block."""
    with unpacked(bundle) as found:
        run_id = check_names(found)
        verdict = gate(found)
        folder = reproduction_folder(keep or parent / f"envlock-reproduction-{run_id}")
        project = project_from_bundle(found, folder)
        yield Reproduction(folder, project, run_id, (found.archive,) if found.archive else (), verdict)
