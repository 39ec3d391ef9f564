"""`envlock report RUN`: one run told in full — what ran, on what image, lock, code, data and hardware, what it
produced, whether it was reproduced and whether its attestation verifies. Text, or one self-contained HTML file.

Everything shown comes from the verified statement (the record as it was signed), never from loose files: a record
edited after its attestation shows as VERIFICATION FAILED, with the signed values. The banner has one of five
states — VERIFIED (a trusted key signed it), UNSIGNED, UNTRUSTED KEY, VERIFICATION FAILED, NOT ATTESTED — and
says who signed. A reproduction counts only when its own attestation holds and its signed record names this run.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envlock.engine.docker import Engine
from envlock.errors import EnvlockError, VerificationError
from envlock.evidence.attest import Checks, RunPlaces, verify_run_dir
from envlock.evidence.bundle import Unpacked, verify_unpacked
from envlock.evidence.trust import Trust
from envlock.lock import lockfile
from envlock.lock.lockfile import Lock
from envlock.paths import ATTESTATION, LOCK_FILE
from envlock.report import shown
from envlock.run.hostprobe import HostState
from envlock.run.records import RunRecord, RunStore
from envlock.run.schema import GitRecord

Row = tuple[str, ...]  # a label and one value, or a label and one value per compared run
Section = tuple[str, list[Row]]
Banner = str  # VERIFIED, UNSIGNED, UNTRUSTED KEY, VERIFICATION FAILED, NOT ATTESTED


@dataclass(frozen=True)
class Summary:
    """The report's content: a title, the banner's state and its line, and sections of rows."""

    title: str
    banner: Banner
    verdict: str
    sections: list[Section]


@dataclass(frozen=True)
class Verified:
    """A run as its evidence shows it: the record to render (the signed one when there is a statement), the
    banner's state, and the checks made."""

    record: RunRecord
    banner: Banner
    line: str
    checks: Checks | None


def verified_run(
    store: RunStore, run_id: str, *, trust: Trust, image_present: Callable[[str], bool | None]
) -> Verified:
    """Verify a run of the project and return what may be shown of it."""
    on_disk = store.load(run_id)
    run_dir = store.directory(on_disk.run_id)
    if not (run_dir / ATTESTATION).is_file():
        return Verified(on_disk, "NOT ATTESTED", "NOT ATTESTED: no attestation; the record below is unverified", None)
    try:
        checks = verify_run_dir(
            RunPlaces.of_project(store.project_dir, run_dir), trust=trust, image_present=image_present
        )
    except EnvlockError as exc:
        return Verified(on_disk, "VERIFICATION FAILED", f"VERIFICATION FAILED: {exc.message}", None)
    signed = checks.signed_record
    try:
        record = RunRecord.from_dict(signed, "the signed record") if signed is not None else on_disk
    except EnvlockError as exc:
        return Verified(on_disk, "VERIFICATION FAILED", f"VERIFICATION FAILED: {exc.message}", checks)
    return Verified(record, *_banner(checks), checks)


def _banner(checks: Checks) -> tuple[Banner, str]:
    """The banner's state for a verification that opened its statement, and its line."""
    verdict = checks.verdict(allow_unsigned=False)
    banner = "UNTRUSTED KEY" if verdict.startswith("UNTRUSTED KEY") else verdict
    if banner == "VERIFICATION FAILED":
        return (
            banner,
            f"VERIFICATION FAILED: {len(checks.mismatches)} mismatch(es); the values below are the signed ones",
        )
    return banner, f"{verdict}: {checks.origin.describe()}"


def summarize(project_dir: Path, run_id: str, *, trust: Trust, image_present: Callable[[str], bool | None]) -> Summary:
    """Gather the report of one run from its verified statement, lock copy and the runs that reproduced it."""
    store = RunStore(project_dir)
    shown = verified_run(store, run_id, trust=trust, image_present=image_present)
    record = shown.record
    lock = lockfile.read(store.directory(record.run_id) / LOCK_FILE)
    reproductions = [
        r for r in store.all() if r.reproduces == record.run_id and r.run_id != record.run_id
    ]  # candidates by their on-disk record; each is verified before it counts
    counted: list[tuple[Verified, str]] = []
    rows: list[Row] = []
    for candidate in reproductions:
        other = verified_run(store, candidate.run_id, trust=trust, image_present=image_present)
        state, counts = _reproduction_state(record, other)
        rows.append((other.record.run_id, state))
        if counts:
            counted.append((other, state))
    sections = _sections(record, lock, rows or [("reproduced", f"not yet (envlock reproduce {record.run_id})")])
    for other, _ in counted:
        sections.append((f"Original and reproduction {other.record.run_id}", _side_by_side(record, other.record)))
    sections.append(("Verified", _check_rows(shown.line, shown.checks)))
    trusted_repro = any(o.banner == "VERIFIED" for o, _ in counted)
    reproduced = (
        "reproduced"
        if trusted_repro
        else "reproduced per evidence whose origin is not verified"
        if counted
        else "not reproduced yet"
    )
    return Summary(f"envlock run {record.run_id}", shown.banner, f"{shown.line}; {reproduced}", sections)


def summarize_bundle(found: Unpacked, trust: Trust, engine: Callable[[], Engine | None]) -> Summary:
    """The bundle reviewer's view: the bundled run told from its verified statement (the signed record), with the
    bundle's own checks; nothing is read from the bundle's loose record."""
    checks = verify_unpacked(found, trust, engine)
    signed = checks.signed_record
    if signed is None:  # verify_run_dir refuses a statement without a record; kept for the type checker
        raise VerificationError("the bundle's attestation carries no run record")
    record = RunRecord.from_dict(signed, "the signed record")
    lock = lockfile.read(found.root / "run" / LOCK_FILE)
    banner, line = _banner(checks)
    sections = _sections(record, lock, [("reproduced", "a bundle carries one run: envlock reproduce BUNDLE")])
    sections.append(("Verified", _check_rows(line, checks)))
    return Summary(f"envlock run {record.run_id} (bundle)", banner, line, sections)


def _sections(record: RunRecord, lock: Lock, reproduced: list[Row]) -> list[Section]:
    """The run's facts, section by section, from a (signed) record and its lock copy."""
    return [
        ("Run", _run_rows(record)),
        ("Image", _image_rows(record)),
        ("Lock", _lock_rows(record, lock)),
        ("Code", _code_rows(record.git)),
        ("Inputs", _input_rows(record)),
        ("Hardware", _hardware_rows(record.host)),
        ("Determinism", [(k, v) for k, v in sorted(record.environment.items())] or [("settings", "none recorded")]),
        (
            "Outputs",
            [(path, digest or "not produced") for path, digest in sorted(record.outputs.items())]
            or [("outputs", "none declared")],
        ),
        ("Reproduced", reproduced),
    ]


def _check_rows(line: str, checks: Checks | None) -> list[Row]:
    rows: list[Row] = [("verdict", line)]
    if checks is not None:
        rows += [("check", text) for text in checks.lines()]
    return rows


def _reproduction_state(original: RunRecord, other: Verified) -> tuple[str, bool]:
    """How a re-run counts: only with its own attestation holding and its signed record naming the original."""
    if other.checks is None or other.banner in ("NOT ATTESTED", "VERIFICATION FAILED"):
        return f"not counted: {other.line}", False
    if other.record.reproduces != original.run_id:
        return "not counted: its signed record does not name this run", False
    same = other.record.exit_code == original.exit_code and other.record.outputs == original.outputs
    outcome = "REPRODUCED (bit-identical outputs)" if same else "outputs or exit status differ"
    origin = "attestation VERIFIED" if other.banner == "VERIFIED" else f"attestation {other.banner}"
    return f"{outcome}; {origin} ({other.checks.origin.describe()})", same


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def _run_rows(record: RunRecord) -> list[Row]:
    """What ran, when, and how it ended."""
    return [
        ("id", record.run_id),
        ("command", " ".join(record.command)),
        ("status", record.status),
        ("exit code", "-" if record.exit_code is None else str(record.exit_code)),
        ("started", record.started),
        ("ended", record.ended or "not ended"),
        ("seed", str(record.seed)),
        ("passed variables (names)", ", ".join(record.passed_env) or "none"),
        ("forced past preflight", _yes(record.forced)),
        ("reproduces", record.reproduces or "-"),
    ]


def _image_rows(record: RunRecord) -> list[Row]:
    """The image it ran on, and where it was pushed."""
    return [
        ("id", record.image_id),
        ("reference", record.image_reference),
        ("registry digests", ", ".join(record.repo_digests) or "not pushed"),
    ]


def _lock_rows(record: RunRecord, lock: Lock) -> list[Row]:
    """The lock the image was built from: its hash, Python, base, packages and CUDA stack."""
    target = lock.target(record.platform)
    cuda = target.cuda
    return [
        ("hash", record.lock_hash),
        ("platform", record.platform),
        ("python", lock.python),
        ("base", f"{lock.base.name} ({lock.base.kind})"),
        ("packages", str(len(target.packages))),
        (
            "CUDA",
            f"{cuda.version} (runtime {cuda.runtime}, cuDNN {cuda.cudnn}, NCCL {cuda.nccl}, "
            f"driver >= {cuda.driver_min})"
            if cuda.kind == "cuda"
            else "none (CPU stack)",
        ),
    ]


def _code_rows(git: GitRecord | None) -> list[Row]:
    """The code that ran: its commit, and what was uncommitted."""
    if git is None or git.commit is None:
        return [("commit", "not in git"), ("uncommitted changes", "-"), ("untracked files", "-")]
    rows: list[Row] = [
        ("commit", git.commit),
        ("uncommitted changes", f"yes (diff sha256 {git.diff_sha256})" if git.dirty and git.diff_sha256 else "no"),
        ("untracked files", ", ".join(git.untracked) if git.untracked else "none"),
    ]
    rows += [(f"untracked {name}", f"saved, sha256 {digest}") for name, digest in sorted(git.saved.items())]
    rows += [(f"untracked {name}", f"not saved: {why}") for name, why in sorted(git.skipped.items())]
    return rows


def _input_rows(record: RunRecord) -> list[Row]:
    """The declared inputs, each file's sha256."""
    if not record.inputs:
        return [("inputs", "none declared")]
    rows: list[Row] = [("manifest sha256", record.inputs.digest)]
    rows += [(path, digest) for path, digest in sorted(record.inputs.files.items())]
    rows += [(path, "absent when the run started") for path in record.inputs.missing]
    return rows


def _hardware_rows(host: HostState | None) -> list[Row]:
    """The host it ran on: driver, GPUs, CPU and kernel."""
    if host is None:
        return [("host", "not probed")]
    return [
        ("NVIDIA driver", host.driver_version or "none (no GPU)"),
        ("CUDA driver", host.cuda_driver_version or "-"),
        (
            "GPUs",
            ", ".join(f"{g.name} ({g.arch}, {g.uuid})" for g in host.gpus) if host.gpus else "no GPU",
        ),
        ("CPU", host.cpu_model or "-"),
        ("kernel", host.kernel or "-"),
        ("container engine", host.docker_version or "-"),
    ]


def _side_by_side(original: RunRecord, other: RunRecord) -> list[Row]:
    """The facts that matter for a reproduction, original beside re-run, each marked when it moved."""
    rows: list[Row] = [("", "original " + original.run_id, "reproduction " + other.run_id)]

    def host(record: RunRecord) -> tuple[str, str]:
        if record.host is None:
            return "not probed", "-"
        gpus = ", ".join(g.name for g in record.host.gpus) or "no GPU"
        return gpus, record.host.driver_version or "none (no GPU)"

    pairs: list[tuple[str, str, str]] = [
        ("exit code", str(original.exit_code), str(other.exit_code)),
        ("image", original.image_id, other.image_id),
        ("lock hash", original.lock_hash, other.lock_hash),
        ("commit", _commit(original), _commit(other)),
        (
            "inputs",
            original.inputs.digest if original.inputs else "none",
            other.inputs.digest if other.inputs else "none",
        ),
        ("GPUs", host(original)[0], host(other)[0]),
        ("NVIDIA driver", host(original)[1], host(other)[1]),
        ("seed", str(original.seed), str(other.seed)),
        ("started", original.started, other.started),
    ]
    for path in sorted(original.outputs.keys() | other.outputs.keys()):
        pairs.append(
            (f"output {path}", original.outputs.get(path) or "not produced", other.outputs.get(path) or "not produced")
        )
    for label, a, b in pairs:
        rows.append((label if a == b or label == "started" else f"{label} (moved)", a, b))
    return rows


def _inputs(record: RunRecord) -> str:
    return f"manifest {record.inputs.digest}" if record.inputs else "none declared"


def _commit(record: RunRecord) -> str:
    return record.git.commit if record.git and record.git.commit else "not in git"


def render_text(summary: Summary) -> str:
    """The report as plain text (every value escaped: a record's strings never move the terminal's cursor nor
    start a line of their own)."""
    lines = [shown(summary.title), f"[{summary.banner}] {shown(summary.verdict)}", ""]
    for title, rows in summary.sections:
        lines.append(shown(title))
        cells = [[shown(cell) for cell in row] for row in rows]
        width = max((len(row[0]) for row in cells), default=0)
        lines += [f"  {row[0]:<{width}}  {'  |  '.join(row[1:])}".rstrip() for row in cells]
        lines.append("")
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1b1f24;background:#fff}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ddd}
.banner{font-weight:600;padding:.6rem .9rem;border-radius:.3rem;display:block;border:2px solid}
.banner .state{font-size:1.2rem;letter-spacing:.04em;margin-right:.6rem}
.verified{background:#e6f4ea;border-color:#1a7f37;color:#0f5323}
.unverified{background:#fff8e1;border-color:#b7791f;color:#6b4a00}
.failed{background:#fbeaea;border-color:#cf222e;color:#82071e}
table{border-collapse:collapse;width:100%}td{padding:.2rem .6rem;vertical-align:top}
td.k{color:#57606a;white-space:nowrap;width:14rem}td.v{font-family:ui-monospace,monospace;word-break:break-all}
tr.head td{font-weight:600;color:#1b1f24}
"""
BANNER_CLASS = {
    "VERIFIED": "verified",
    "UNSIGNED": "unverified",
    "UNTRUSTED KEY": "unverified",
    "NOT ATTESTED": "unverified",
    "VERIFICATION FAILED": "failed",
}


def render_html(summary: Summary) -> str:
    """The report as one self-contained HTML file: inline CSS, no scripts, no external assets."""
    css_class = BANNER_CLASS.get(summary.banner, "failed")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(summary.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(summary.title)}</h1>",
        f'<p class="banner {css_class}" id="verdict" data-state="{html.escape(summary.banner)}">'
        f'<span class="state">{html.escape(summary.banner)}</span>{html.escape(summary.verdict)}</p>',
    ]
    for title, rows in summary.sections:
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        for index, row in enumerate(rows):
            head = ' class="head"' if title.startswith("Original and reproduction") and index == 0 else ""
            cells = "".join(f'<td class="v">{html.escape(value)}</td>' for value in row[1:])
            parts.append(f'<tr{head}><td class="k">{html.escape(row[0])}</td>{cells}</tr>')
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
