"""`envlock report RUN`: one run told in full — what ran, on what image, lock, code, data and hardware, what it
produced, whether it was reproduced and whether its attestation verifies. Text, or one self-contained HTML file."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envlock.errors import EnvlockError
from envlock.evidence.attest import ATTESTATION, verify_run_dir
from envlock.lock import lockfile
from envlock.lock.lockfile import Lock
from envlock.run.hostprobe import HostState
from envlock.run.records import RunRecord, RunStore
from envlock.run.schema import GitRecord
from envlock.signing import PublicKey

Section = tuple[str, list[tuple[str, str]]]


@dataclass(frozen=True)
class Summary:
    """The report's content: a title, a verdict line and sections of (label, value) rows."""

    title: str
    verdict: str
    sections: list[Section]


def _reproductions(store: RunStore, record: RunRecord) -> list[tuple[str, str]]:
    rows = []
    for other in store.all():
        if other.reproduces != record.run_id:
            continue
        same = other.exit_code == record.exit_code and other.outputs == record.outputs
        rows.append((other.run_id, "REPRODUCED (bit-identical outputs)" if same else "outputs or exit status differ"))
    return rows or [("reproduced", "not yet (envlock reproduce " + record.run_id + ")")]


def summarize(
    project_dir: Path, run_id: str, *, key: PublicKey | None, image_present: Callable[[str], bool | None]
) -> Summary:
    """Gather the report of one run from its record, lock copy, attestation and the runs that reproduced it."""
    store = RunStore(project_dir)
    record = store.load(run_id)
    run_dir = store.directory(record.run_id)
    lock = lockfile.read(run_dir / "envlock.lock")
    verified, verify_rows = _verification(run_dir, project_dir, record, key=key, image_present=image_present)
    reproductions = _reproductions(store, record)
    sections: list[Section] = [
        ("Run", _run_rows(record)),
        ("Image", _image_rows(record)),
        ("Lock", _lock_rows(record, lock)),
        ("Code", _code_rows(record.git)),
        ("Hardware", _hardware_rows(record.host)),
        ("Determinism", sorted(record.environment.items())),
        (
            "Outputs",
            [(path, digest or "not produced") for path, digest in sorted(record.outputs.items())]
            or [("outputs", "none declared")],
        ),
        ("Reproduced", reproductions),
        ("Verified", verify_rows),
    ]
    reproduced = any("REPRODUCED" in value for _, value in reproductions)
    verdict = f"{verified}; {'reproduced' if reproduced else 'not reproduced yet'}"
    return Summary(f"envlock run {record.run_id}", verdict, sections)


def _verification(
    run_dir: Path,
    project_dir: Path,
    record: RunRecord,
    *,
    key: PublicKey | None,
    image_present: Callable[[str], bool | None],
) -> tuple[str, list[tuple[str, str]]]:
    """The attestation's verdict and its checks, one row each (or why there is nothing to check)."""
    if not (run_dir / ATTESTATION).is_file():
        return "not attested", [("verdict", "no attestation (envlock attest " + record.run_id + ")")]
    try:
        checks = verify_run_dir(run_dir, project_dir, key=key, image_present=image_present)
        verified = "VERIFIED" if not checks.mismatches else "VERIFICATION FAILED"
        rows = [("verdict", verified)] + [("check", line) for line in checks.lines()]
    except EnvlockError as exc:
        return "VERIFICATION FAILED", [("verdict", exc.message)]
    return verified, rows


def _run_rows(record: RunRecord) -> list[tuple[str, str]]:
    """What ran, when, and how it ended."""
    return [
        ("id", record.run_id),
        ("command", " ".join(record.command)),
        ("status", record.status),
        ("exit code", str(record.exit_code)),
        ("started", record.started),
        ("ended", str(record.ended)),
        ("seed", str(record.seed)),
        ("forced past preflight", str(record.forced)),
    ]


def _image_rows(record: RunRecord) -> list[tuple[str, str]]:
    """The image it ran on, and where it was pushed."""
    return [
        ("id", record.image_id),
        ("reference", record.image_reference),
        ("registry digests", ", ".join(record.repo_digests) or "not pushed"),
    ]


def _lock_rows(record: RunRecord, lock: Lock) -> list[tuple[str, str]]:
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
            else "cpu",
        ),
    ]


def _code_rows(git: GitRecord | None) -> list[tuple[str, str]]:
    """The code that ran: its commit, and what was uncommitted."""
    return [
        ("commit", str(git.commit) if git else "not recorded"),
        ("dirty", str(git.dirty) if git else "-"),
        ("diff sha256", str(git.diff_sha256) if git and git.diff_sha256 else "none"),
        ("untracked files", ", ".join(git.untracked) if git and git.untracked else "none"),
    ]


def _hardware_rows(host: HostState | None) -> list[tuple[str, str]]:
    """The host it ran on: driver, GPUs, CPU and kernel."""
    return [
        ("driver", str(host.driver_version) if host else "not probed"),
        ("CUDA driver", str(host.cuda_driver_version) if host else "-"),
        (
            "GPUs",
            ", ".join(f"{g.name} (sm_{g.compute_capability.replace('.', '')})" for g in host.gpus)
            if host and host.gpus
            else "none (CPU host)",
        ),
        ("CPU", host.cpu_model if host else "-"),
        ("kernel", host.kernel if host else "-"),
    ]


def render_text(summary: Summary) -> str:
    """The report as plain text."""
    lines = [summary.title, summary.verdict, ""]
    for title, rows in summary.sections:
        lines.append(title)
        width = max((len(label) for label, _ in rows), default=0)
        lines += [f"  {label:<{width}}  {value}" for label, value in rows]
        lines.append("")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1b1f24;background:#fff}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ddd}
.verdict{font-weight:600;padding:.4rem .8rem;border-radius:.3rem;display:inline-block;background:#eef6ee}
.bad{background:#fbeaea}table{border-collapse:collapse;width:100%}td{padding:.2rem .6rem;vertical-align:top}
td.k{color:#57606a;white-space:nowrap;width:14rem}td.v{font-family:ui-monospace,monospace;word-break:break-all}
"""


def render_html(summary: Summary) -> str:
    """The report as one self-contained HTML file: inline CSS, no scripts, no external assets."""
    bad = "FAILED" in summary.verdict
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(summary.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(summary.title)}</h1>",
        f'<p class="verdict{" bad" if bad else ""}" id="verdict">{html.escape(summary.verdict)}</p>',
    ]
    for title, rows in summary.sections:
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        parts += [
            f'<tr><td class="k">{html.escape(label)}</td><td class="v">{html.escape(value)}</td></tr>'
            for label, value in rows
        ]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
