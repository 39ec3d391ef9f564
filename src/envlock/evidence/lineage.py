"""Lineage: a result's whole story. From a file (by its content hash) or a run, the chain of runs back to the raw
inputs (files no run wrote), read from the links each run recorded when it started — never recomputed from the
files as they are now, so later edits cannot rewrite history. A DAG: several parents, fan-out."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from envlock.codecs import project_path_problem
from envlock.errors import RerunError, UsageError
from envlock.evidence.runreport import BANNER_CLASS, CSS, Banner, Verified, verified_run
from envlock.evidence.trust import Trust
from envlock.fsutil import atomic_write_text, read_small_text, sha256_file
from envlock.paths import ProjectLayout
from envlock.report import shown_lines
from envlock.run.arguments import FileRef, RunRef
from envlock.run.links import producers
from envlock.run.records import RunRecord, RunStore, new_run_id
from envlock.run.reproduce import EXIT_OF, Outcome, Tolerance, Verdict, reproduce_run, rerun_request
from envlock.run.runner import RunEvidence, RunRequest


@dataclass(frozen=True)
class RawInput:
    """A file the chain read that no run of the project wrote: where the story starts."""

    path: str
    sha256: str
    read_by: tuple[str, ...]  # the runs that read it


@dataclass(frozen=True)
class Lineage:
    """The runs that led to a result, parents before children, and the raw inputs they started from."""

    target: str  # what was asked about: a path or a run id
    target_sha256: str | None  # the file's content when a path was asked about
    run: str  # the run that made the result
    steps: tuple[RunRecord, ...]  # topological order (a parent always before its children; ties by start time)
    raw: tuple[RawInput, ...] = ()
    lost: tuple[str, ...] = ()  # linked runs whose records are gone or unreadable: the story stops there

    def number(self, run_id: str) -> int:
        """A step's 1-based position in the chain."""
        return next(i for i, step in enumerate(self.steps, 1) if step.run_id == run_id)

    def parents(self, record: RunRecord) -> tuple[str, ...]:
        """The runs a step read outputs of, in link order, each once."""
        return tuple(dict.fromkeys(link.run for link in record.links))

    def children(self, run_id: str) -> tuple[str, ...]:
        """The steps that read an output of this one."""
        return tuple(step.run_id for step in self.steps if run_id in self.parents(step))

    def edges(self) -> list[tuple[str, str, str]]:
        """(parent run, child run, the file as the child read it), one per link."""
        return [(link.run, step.run_id, link.input) for step in self.steps for link in step.links]

    def as_dict(self) -> dict[str, Any]:
        """JSON form for tools."""
        return {
            "target": self.target,
            "target_sha256": self.target_sha256,
            "run": self.run,
            "steps": [_step_dict(self, step) for step in self.steps],
            "raw_inputs": [{"path": r.path, "sha256": r.sha256, "read_by": list(r.read_by)} for r in self.raw],
            "edges": [{"from": a, "to": b, "path": path} for a, b, path in self.edges()],
            "lost": list(self.lost),
        }

    def lines(self) -> list[str]:
        """The chain as text: the raw inputs, then each step with what it read (and from whom) and wrote."""
        what = f"{self.target} (sha256 {self.target_sha256[:12]})" if self.target_sha256 else f"run {self.target}"
        lines = [
            f"lineage of {what}: {len(self.steps)} step{'s' if len(self.steps) != 1 else ''}, "
            f"{len(self.raw)} raw input{'s' if len(self.raw) != 1 else ''}"
        ]
        lines += [f"raw input {r.path}  sha256 {r.sha256}" for r in self.raw]
        for index, step in enumerate(self.steps, 1):
            lines += ["", *step_lines(self, index, step)]
        lines += [f"lost: run {run} (linked, but its record is gone or unreadable)" for run in self.lost]
        return lines


def step_lines(lineage: Lineage, index: int, step: RunRecord) -> list[str]:
    """One step as text."""
    came = {link.input: link for link in step.links}
    lines = [
        f"step {index}  run {step.run_id}  {step.status}, exit {step.exit_code}",
        f"  command  {' '.join(step.command)}",
        f"  image    {step.image_id}  ({step.image_reference})",
        f"  lock     {step.lock_hash}",
        f"  commit   {_commit(step)}",
    ]
    if step.params and step.params.values:
        lines.append(f"  params   {', '.join(f'{k}={v}' for k, v in sorted(step.params.values.items()))}")
    for path, digest in sorted(step.inputs.files.items()) if step.inputs else ():
        link = came.get(path)
        known = link is not None and link.run in {s.run_id for s in lineage.steps}
        source = (
            f"from step {lineage.number(link.run)} ({link.output})" if link and known else
            f"from run {link.run} (lost)" if link else "raw"
        )  # fmt: skip
        lines.append(f"  read     {path}  sha256 {digest}  {source}")
    for path, made in sorted(step.outputs.items()):
        lines.append(f"  wrote    {path}  {f'sha256 {made}' if made else 'not produced'}")
    lines += [f"  TAINTED  input {path} {how} while the run ran" for path, how in sorted(step.tainted.items())]
    return lines


def _commit(record: RunRecord) -> str:
    if record.git is None or record.git.commit is None:
        return "not in git"
    return record.git.commit + (" + uncommitted changes" if record.git.dirty else "")


def _step_dict(lineage: Lineage, step: RunRecord) -> dict[str, Any]:
    came = {link.input: link for link in step.links}
    inputs = []
    for path, digest in sorted(step.inputs.files.items()) if step.inputs else ():
        link = came.get(path)
        inputs.append(
            {"path": path, "sha256": digest, "run": link.run if link else None, "output": link.output if link else None}
        )
    return {
        "step": lineage.number(step.run_id),
        "run_id": step.run_id,
        "status": step.status,
        "exit_code": step.exit_code,
        "command": list(step.command),
        "image_id": step.image_id,
        "image_reference": step.image_reference,
        "lock_hash": step.lock_hash,
        "commit": step.git.commit if step.git else None,
        "dirty": step.git.dirty if step.git else None,
        "inputs": inputs,
        "outputs": dict(step.outputs),
        "parents": list(lineage.parents(step)),
        "params": dict(step.params.values) if step.params else {},
        "tainted": dict(step.tainted),
        "chain": step.chain,
        "reproduces": step.reproduces,
    }


LineageTarget = FileRef | RunRef  # what `lineage`, `report --chain` and `reproduce --chain` accept


def resolve_target(store: RunStore, target: LineageTarget, records: list[RunRecord]) -> tuple[RunRecord, str | None]:
    """The run a PATH or RUN names, and the file's sha256 for a path: a file is found by its content among the
    runs' outputs (the original, latest run that wrote those bytes), wherever it lies now."""
    if isinstance(target, RunRef):
        return target.record, None
    digest = sha256_file(target.path)
    made = producers(records).get(digest)
    if made is None:
        raise UsageError(
            f"no run of {store.project_dir} wrote {target.text} as it is now (sha256 {digest[:12]})",
            hint="it is a raw input, or it was edited after the run that wrote it; pass a run id instead",
        )
    return next(r for r in records if r.run_id == made[0]), digest


def trace(store: RunStore, target: LineageTarget, records: list[RunRecord] | None = None) -> Lineage:
    """The chain behind a file or run, back to the raw inputs, from the links the runs recorded."""
    everything = store.all() if records is None else records
    index = {record.run_id: record for record in everything}
    top, digest = resolve_target(store, target, everything)
    index.setdefault(top.run_id, top)  # the records given (verified ones, for a report) over the file on disk
    found: dict[str, RunRecord] = {}
    lost: list[str] = []
    todo = [top.run_id]
    while todo:
        run_id = todo.pop()
        if run_id in found or run_id in lost:
            continue
        record = index.get(run_id)
        if record is None:
            lost.append(run_id)
            continue
        found[run_id] = record
        todo += [link.run for link in record.links]
    steps = _ordered(found)
    return Lineage(target.text, digest, top.run_id, steps, _raw(steps), tuple(sorted(lost)))


def _ordered(found: dict[str, RunRecord]) -> tuple[RunRecord, ...]:
    """Parents before children (Kahn's order), ties by start time; a cycle cannot arise (a run links only
    to runs whose outputs existed when it started) but a hand-made one would leave its steps out, never loop."""
    pending = {run_id: {link.run for link in r.links if link.run in found} for run_id, r in found.items()}
    order: list[RunRecord] = []
    while ready := sorted((found[run_id].started, run_id) for run_id, parents in pending.items() if not parents):
        first = ready[0][1]
        order.append(found[first])
        del pending[first]
        for parents in pending.values():
            parents.discard(first)
    return tuple(order)


def _raw(steps: tuple[RunRecord, ...]) -> tuple[RawInput, ...]:
    """The inputs no link explains: (path, sha256) and who read them."""
    readers: dict[tuple[str, str], list[str]] = {}
    for step in steps:
        linked = {link.input for link in step.links}
        for path, digest in sorted(step.inputs.files.items()) if step.inputs else ():
            if path not in linked:
                readers.setdefault((path, digest), []).append(step.run_id)
    return tuple(RawInput(path, digest, tuple(runs)) for (path, digest), runs in sorted(readers.items()))


# --- Re-running a chain -------------------------------------------------------------------------------------------

# One step re-run: (the original step, its request, the recorded code, where its inputs are) → the new record.
RerunStep = Callable[[RunRecord, RunRequest, Path, Path], RunRecord]


def new_chain_id() -> str:
    """One id for every run of one chain re-run: `chain-20261126T075012Z-3f9a1c`."""
    return "chain-" + new_run_id()


@dataclass(frozen=True)
class StepVerdict:
    """One step of a chain re-run: its verdict, or why it was not re-run (the chain stopped before it)."""

    original: RunRecord
    verdict: Verdict | None = None

    @property
    def outcome(self) -> str:
        """The step's verdict; a re-run whose inputs moved while it ran (tainted) is never REPRODUCED."""
        if self.verdict is None:
            return "NOT RUN"
        if self.verdict.new.tainted and self.verdict.outcome == "REPRODUCED":
            return "NOT REPRODUCED"
        return self.verdict.outcome

    def divergence(self) -> str:
        """The first thing that differs, named: an output, then an input, then the exit status, then the log."""
        verdict = self.verdict
        if verdict is None:
            return "not re-run"
        named = [
            f"{check.path} {check.status}" + (f" ({check.details[0]})" if check.details else "")
            for check in verdict.outputs
            if check.status not in ("identical", "within tolerance", "not produced")
        ]
        named += [f"input {path} {how}" for path, how in verdict.changes.inputs.items()]
        named += [
            f"input {path} {how} while the re-run ran (tainted)" for path, how in sorted(verdict.new.tainted.items())
        ]
        if verdict.new.exit_code != verdict.original.exit_code:
            named.append(f"exit code {verdict.original.exit_code} -> {verdict.new.exit_code}")
        if verdict.log and verdict.log.status != "identical":
            named.append("log.txt differs")
        return named[0] if named else verdict.outcome.lower()


@dataclass(frozen=True)
class ChainVerdict:
    """A chain re-run: one verdict per step, and one for the chain (REPRODUCED only when every step is)."""

    chain_id: str
    lineage: Lineage
    steps: tuple[StepVerdict, ...]

    @property
    def first_divergent(self) -> StepVerdict | None:
        """The step where the chain stopped."""
        return next((step for step in self.steps if step.outcome != "REPRODUCED"), None)

    @property
    def outcome(self) -> Outcome:
        """REPRODUCED when every step is; otherwise the first divergent step's verdict."""
        first = self.first_divergent
        if first is None:
            return "REPRODUCED"
        return "NOT REPRODUCED" if first.outcome == "NOT REPRODUCED" else cast("Outcome", first.outcome)

    @property
    def exit_code(self) -> int:
        """reproduce's exit codes: 0 only for REPRODUCED."""
        return EXIT_OF[self.outcome]

    def lines(self) -> list[str]:
        """The chain verdict as text: one line per step, then the chain's."""
        lines = []
        for index, step in enumerate(self.steps, 1):
            command = " ".join(step.original.command)
            if step.verdict is None:  # after the divergent step: nothing ran
                lines.append(f"step {index} {step.outcome}: run {step.original.run_id} was not re-run ({command})")
                continue
            lines.append(
                f"step {index} {step.outcome}: run {step.verdict.new.run_id} re-ran {step.original.run_id} ({command})"
            )
            if step.outcome != "REPRODUCED":
                lines += [f"  {line}" for line in step.verdict.lines()[1:]]
        first = self.first_divergent
        if first is None:
            lines.append(f"chain {self.chain_id}: REPRODUCED ({len(self.steps)} steps)")
        else:
            number = self.lineage.number(first.original.run_id)
            lines.append(
                f"chain {self.chain_id}: {self.outcome}: first divergent step {number} "
                f"(run {first.original.run_id}): {first.divergence()}"
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        """JSON form, kept as .envlock/chains/<chain id>.json."""
        first = self.first_divergent
        divergent = None
        if first is not None:
            divergent = {
                "step": self.lineage.number(first.original.run_id),
                "run": first.original.run_id,
                "what": first.divergence(),
            }
        return {
            "chain": self.chain_id,
            "verdict": self.outcome,
            "exit_code": self.exit_code,
            "target": self.lineage.target,
            "first_divergent": divergent,
            "steps": [
                {
                    "step": index,
                    "original": step.original.run_id,
                    "new": step.verdict.new.run_id if step.verdict else None,
                    "verdict": step.outcome,
                }
                for index, step in enumerate(self.steps, 1)
            ],
        }


def _stage_inputs(step: RunRecord, project_dir: Path, store: RunStore, made: dict[str, RunRecord], into: Path) -> None:
    """The step's inputs as this re-run gives them: each linked file from its parent's re-run (kept under that
    run's outputs/), each raw file from the project; a file that cannot be found is left out (the verdict names
    it). Hard links where the file system allows (no copy of big data), else copies."""
    came = {link.input: link for link in step.links}
    for path in sorted(step.inputs.files) if step.inputs else ():
        link = came.get(path)
        parent = made.get(link.run) if link else None
        source = store.saved_output(parent.run_id, link.output) if link and parent else project_dir / path
        if project_path_problem(path) or source.is_symlink() or not source.is_file():
            continue
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def reproduce_chain(
    lineage: Lineage,
    store: RunStore,
    project_dir: Path,
    rerun_step: RerunStep,
    tolerance: Tolerance,
    *,
    evidence: RunEvidence,
    force: bool = False,
    report: Callable[[str], None] = lambda _line: None,
) -> ChainVerdict:
    """Re-run every step of the chain in order, from the raw inputs, each on its recorded code and image (through
    reproduce's own machinery), each fed its parents' outputs from this re-run; stop at the first step that does
    not reproduce. Every re-run carries one chain id; the chain's verdict is kept in .envlock/chains/."""
    if lineage.lost:
        raise RerunError(
            f"run {lineage.lost[0]} is linked in the chain but its record is gone: the chain cannot be re-run "
            "from its raw inputs",
            hint=f"envlock lineage {lineage.target} shows where the story stops",
        )
    chain_id = new_chain_id()
    made: dict[str, RunRecord] = {}
    results: list[StepVerdict] = []
    staging_root = ProjectLayout(store.project_dir).chains
    staging_root.mkdir(parents=True, exist_ok=True)
    for index, step in enumerate(lineage.steps, 1):
        if results and results[-1].outcome != "REPRODUCED":
            results.append(StepVerdict(step))
            continue
        report(f"chain {chain_id}: step {index}/{len(lineage.steps)}: re-running {step.run_id}")
        request = replace(rerun_request(step, force), chain=chain_id)
        with tempfile.TemporaryDirectory(prefix="inputs-", dir=staging_root) as staged:
            _stage_inputs(step, project_dir, store, made, Path(staged))

            def rerun(
                code: Path, step: RunRecord = step, request: RunRequest = request, staged: str = staged
            ) -> RunRecord:
                return rerun_step(step, request, code, Path(staged))

            verdict = reproduce_run(step, store, project_dir, rerun, tolerance, evidence=evidence)
        made[step.run_id] = verdict.new
        results.append(StepVerdict(step, verdict))
    chain = ChainVerdict(chain_id, lineage, tuple(results))
    text = json.dumps(chain.as_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_text(staging_root / f"{chain_id}.json", text)
    return chain


# --- The narrative: envlock report --chain ------------------------------------------------------------------------

_SEVERITY = ("VERIFIED", "UNSIGNED", "UNTRUSTED KEY", "NOT ATTESTED", "VERIFICATION FAILED")


@dataclass(frozen=True)
class ChainReport:
    """The chain as its evidence shows it: each step verified (and shown from its signed record), the chain's
    banner (VERIFIED only when every step is; else the worst step's state), and the chain re-runs kept."""

    title: str
    banner: Banner
    verdict: str
    lineage: Lineage
    shown: dict[str, Verified]  # run id → the step as verified
    reruns: list[dict[str, Any]]  # the chain verdicts kept for this chain, oldest first


def summarize_chain(
    project_dir: Path, target: LineageTarget, *, trust: Trust, image_present: Callable[[str], bool | None]
) -> ChainReport:
    """Verify every step of the chain behind `target` and tell the chain from the signed records."""
    store = RunStore(project_dir)
    first = trace(store, target)
    shown = {s.run_id: verified_run(store, s.run_id, trust=trust, image_present=image_present) for s in first.steps}
    lineage = trace(store, target, [v.record for v in shown.values()])  # the links as signed, not as on disk
    banner = max((v.banner for v in shown.values()), key=_SEVERITY.index, default="NOT ATTESTED")
    counts = {state: sum(v.banner == state for v in shown.values()) for state in _SEVERITY}
    told = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    reruns = _chain_verdicts(project_dir, {s.run_id for s in lineage.steps})
    last = f"; last chain re-run {reruns[-1]['chain']}: {reruns[-1]['verdict']}" if reruns else "; never re-run"
    title = f"envlock chain of {target.text}"
    return ChainReport(title, banner, f"{len(lineage.steps)} steps: {told}{last}", lineage, shown, reruns)


def _chain_verdicts(project_dir: Path, originals: set[str]) -> list[dict[str, Any]]:
    """The chain re-runs kept whose steps are this chain's runs (unreadable ones skipped: a report is no judge)."""
    found = []
    folder = ProjectLayout(project_dir).chains
    for path in sorted(folder.glob("chain-*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(read_small_text(path))
        except (OSError, ValueError):
            continue
        steps = data.get("steps") if isinstance(data, dict) else None
        readable = isinstance(steps, list) and steps and all(isinstance(s, dict) for s in steps)
        if readable and {s.get("original") for s in steps or ()} <= originals:
            found.append(data)
    return found


def _step_rows(report: ChainReport, step: RunRecord) -> list[tuple[str, str]]:
    """One step's facts from its verified record."""
    shown = report.shown[step.run_id]
    lineage = report.lineage
    rows = [("verification", shown.line), ("run", f"{step.run_id} ({step.status}, exit {step.exit_code})")]
    rows += [
        ("command", " ".join(step.command)),
        ("image", f"{step.image_id} ({step.image_reference})"),
        ("lock", step.lock_hash),
        ("commit", _commit(step)),
    ]
    rows += [(f"param {k}", v) for k, v in sorted(step.params.values.items())] if step.params else []
    came = {link.input: link for link in step.links}
    for path, digest in sorted(step.inputs.files.items()) if step.inputs else ():
        link = came.get(path)
        known = link is not None and any(s.run_id == link.run for s in lineage.steps)
        source = f"from step {lineage.number(link.run)}" if link and known else "raw input" if not link else "lost"
        rows.append((f"read {path}", f"sha256 {digest} ({source})"))
    rows += [(f"wrote {path}", f"sha256 {d}" if d else "not produced") for path, d in sorted(step.outputs.items())]
    rows += [(f"TAINTED {path}", f"{how} while the run ran") for path, how in sorted(step.tainted.items())]
    for rerun in report.reruns[-1:]:
        for entry in rerun["steps"]:
            if entry.get("original") == step.run_id:
                # A step after the divergent one was never re-run: it has no new run to name.
                new = f" ({entry['new']})" if entry.get("new") else ""
                rows.append(("last chain re-run", f"{rerun.get('chain')}: {entry.get('verdict')}{new}"))
    return rows


def render_chain_text(report: ChainReport) -> str:
    """The chain report as plain text."""
    lines = [report.title, f"[{report.banner}] {report.verdict}", ""]
    lines += [f"raw input {r.path}  sha256 {r.sha256}" for r in report.lineage.raw]
    for index, step in enumerate(report.lineage.steps, 1):
        lines += ["", f"Step {index}: {' '.join(step.command)}"]
        rows = _step_rows(report, step)
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += ["", "Chain re-runs"]
    lines += [
        f"  {r.get('chain')}: {r.get('verdict')}"
        + (f" (first divergent: step {r['first_divergent'].get('step')}, {r['first_divergent'].get('what')})"
           if isinstance(r.get("first_divergent"), dict) else "")
        for r in report.reruns
    ] or ["  none yet (envlock reproduce --chain " + report.lineage.run + ")"]  # fmt: skip
    return shown_lines("\n".join(lines)) + "\n"  # a record's strings never move the terminal's cursor


_NODE_W, _NODE_H, _GAP_X, _GAP_Y = 220, 54, 70, 24
_FILL = {"VERIFIED": "#e6f4ea", "VERIFICATION FAILED": "#fbeaea"}


def chain_svg(report: ChainReport) -> str:
    """The chain drawn as an inline SVG: raw inputs in the first column, each step one column right of its
    deepest parent, an arrow per file read; each step boxed in its verification state's colour."""
    lineage = report.lineage
    depth: dict[str, int] = {}
    for step in lineage.steps:
        depth[step.run_id] = 1 + max((depth[p] for p in lineage.parents(step) if p in depth), default=0)
    columns: dict[int, list[str]] = {}
    nodes: dict[str, tuple[int, int, str, str]] = {}  # key → (x, y, label, state)
    for raw in lineage.raw:
        columns.setdefault(0, []).append(f"raw:{raw.path}:{raw.sha256}")
    for step in lineage.steps:
        columns.setdefault(depth[step.run_id], []).append(step.run_id)
    for column, keys in columns.items():
        for row, key in enumerate(keys):
            x, y = 10 + column * (_NODE_W + _GAP_X), 10 + row * (_NODE_H + _GAP_Y)
            if key.startswith("raw:"):
                nodes[key] = (x, y, key.split(":")[1], "raw")
            else:
                step = next(s for s in lineage.steps if s.run_id == key)
                label = f"step {lineage.number(key)}: {' '.join(step.command)}"
                nodes[key] = (x, y, label, report.shown[key].banner)
    width = 20 + (max(columns) + 1) * (_NODE_W + _GAP_X)
    height = 20 + max(len(keys) for keys in columns.values()) * (_NODE_H + _GAP_Y)
    parts = [
        f'<svg id="chain-graph" role="img" aria-label="the chain of runs" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#57606a"/></marker></defs>',
    ]
    edges = [(link.run, step.run_id) for step in lineage.steps for link in step.links if link.run in nodes]
    edges += [(f"raw:{r.path}:{r.sha256}", reader) for r in lineage.raw for reader in r.read_by]
    for source, target in dict.fromkeys(edges):
        (x1, y1, _, _), (x2, y2, _, _) = nodes[source], nodes[target]
        parts.append(
            f'<line class="edge" x1="{x1 + _NODE_W}" y1="{y1 + _NODE_H // 2}" x2="{x2}" y2="{y2 + _NODE_H // 2}" '
            'stroke="#57606a" stroke-width="1.5" marker-end="url(#arrow)"/>'
        )
    for x, y, label, state in nodes.values():
        fill = "#f6f8fa" if state == "raw" else _FILL.get(state, "#fff8e1")
        kind = "raw" if state == "raw" else "step"
        shown = label if len(label) <= 30 else label[:29] + "…"
        parts.append(
            f'<g class="{kind}" data-state="{html.escape(state)}"><rect x="{x}" y="{y}" width="{_NODE_W}" '
            f'height="{_NODE_H}" rx="6" fill="{fill}" stroke="#1b1f24"/>'
            f'<text x="{x + 10}" y="{y + 22}" font-size="13">{html.escape(shown)}</text>'
            f'<text x="{x + 10}" y="{y + 42}" font-size="11" fill="#57606a">'
            f"{html.escape('raw input' if state == 'raw' else state)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_chain_html(report: ChainReport) -> str:
    """One self-contained page: banner, the graph (inline SVG), then the story step by step; no scripts, no
    external assets, and a content policy that lets no request leave the page."""
    css_class = BANNER_CLASS.get(report.banner, "failed")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f'<p class="banner {css_class}" id="verdict" data-state="{html.escape(report.banner)}">'
        f'<span class="state">{html.escape(report.banner)}</span>{html.escape(report.verdict)}</p>',
        "<h2>The chain</h2>",
        chain_svg(report),
        "<h2>Raw inputs</h2><table>",
        *(
            f'<tr><td class="k">{html.escape(r.path)}</td><td class="v">sha256 {r.sha256}</td></tr>'
            for r in report.lineage.raw
        ),
        "</table>",
    ]
    for index, step in enumerate(report.lineage.steps, 1):
        state = report.shown[step.run_id].banner
        parts.append(
            f'<h2 class="step" data-state="{html.escape(state)}">Step {index}: {html.escape(" ".join(step.command))}'
            f" — {html.escape(state)}</h2><table>"
        )
        parts += [
            f'<tr><td class="k">{html.escape(k)}</td><td class="v">{html.escape(v)}</td></tr>'
            for k, v in _step_rows(report, step)
        ]
        parts.append("</table>")
    parts.append("<h2>Chain re-runs</h2><table>")
    for rerun in report.reruns or [{"chain": "none yet", "verdict": f"envlock reproduce --chain {report.lineage.run}"}]:
        parts.append(
            f'<tr><td class="k">{html.escape(str(rerun.get("chain")))}</td>'
            f'<td class="v">{html.escape(str(rerun.get("verdict")))}</td></tr>'
        )
    parts.append("</table></body></html>\n")
    return "\n".join(parts)
