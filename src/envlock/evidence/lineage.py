"""Lineage: a result's whole story. From a file (by its content hash) or a run, the chain of runs back to the raw
inputs (files no run wrote), read from the links each run recorded when it started — never recomputed from the
files as they are now, so later edits cannot rewrite history. A DAG: several parents, fan-out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envlock.errors import RunNotFoundError, UsageError
from envlock.fsutil import sha256_file
from envlock.run.links import producers
from envlock.run.records import RunRecord, RunStore


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


def resolve_target(store: RunStore, target: str, records: list[RunRecord]) -> tuple[RunRecord, str | None]:
    """The run a PATH or RUN names, and the file's sha256 for a path: a file is found by its content among the
    runs' outputs (the original, latest run that wrote those bytes), wherever it lies now."""
    path = Path(target) if Path(target).is_absolute() else store.project_dir / target
    if path.is_file():
        digest = sha256_file(path)
        made = producers(records).get(digest)
        if made is None:
            raise UsageError(
                f"no run of {store.project_dir} wrote {target} as it is now (sha256 {digest[:12]})",
                hint="it is a raw input, or it was edited after the run that wrote it; pass a run id instead",
            )
        return next(r for r in records if r.run_id == made[0]), digest
    try:
        return store.load(target), None
    except RunNotFoundError as exc:
        raise UsageError(
            f"{target!r} is neither a file in {store.project_dir} nor a run of it",
            hint="pass a file a run wrote (envlock lineage out/model.pkl) or a run id from `envlock runs`",
        ) from exc


def trace(store: RunStore, target: str, records: list[RunRecord] | None = None) -> Lineage:
    """The chain behind a file or run, back to the raw inputs, from the links the runs recorded."""
    everything = store.all() if records is None else records
    index = {record.run_id: record for record in everything}
    top, digest = resolve_target(store, target, everything)
    index[top.run_id] = top
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
    return Lineage(target, digest, top.run_id, steps, _raw(steps), tuple(sorted(lost)))


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
