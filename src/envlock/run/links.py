"""Lineage at the run's start: each input whose bytes an earlier run of the project wrote is linked to that run,
by content hash (a file renamed or moved keeps its link; a file edited loses it), and the inputs are checked
again at the end: a run whose inputs moved while it ran is marked tainted, naming each one."""

from __future__ import annotations

from collections.abc import Iterable

from envlock.run.inputs import InputSet
from envlock.run.records import RunRecord
from envlock.run.schema import Link


def producers(records: Iterable[RunRecord], chain: str | None = None) -> dict[str, tuple[str, str]]:
    """sha256 → (run id, output path) over the given runs' outputs. When several runs wrote the same bytes, the
    one chosen is, in order: a run of `chain` (a chain re-run feeds each step its parents' re-runs), an original
    run (not a reproduction, which would only repeat it), the latest."""
    ranked: dict[str, tuple[tuple[bool, bool, str, str], str, str]] = {}
    for record in records:
        # The latest by its start (to the microsecond): run ids sort by the second only.
        rank_of_run = (chain is not None and record.chain == chain, record.reproduces is None, record.started,
                       record.run_id)  # fmt: skip
        for path, digest in record.outputs.items():
            if digest is None:
                continue
            known = ranked.get(digest)
            if known is None or rank_of_run > known[0]:
                ranked[digest] = (rank_of_run, record.run_id, path)
    return {digest: (run, path) for digest, (_, run, path) in ranked.items()}


def find_links(inputs: InputSet | None, earlier: Iterable[RunRecord], chain: str | None = None) -> tuple[Link, ...]:
    """The links of a run's inputs, hashed before it starts, to the earlier runs that wrote the same bytes."""
    if not inputs or not inputs.files:
        return ()
    made = producers(earlier, chain)
    return tuple(Link(path, digest, *made[digest]) for path, digest in sorted(inputs.files.items()) if digest in made)


def moved_inputs(before: InputSet | None, after: InputSet | None) -> dict[str, str]:
    """The inputs that changed, appeared or went missing between the start and the end of the run."""
    if before is None or after is None:
        return {}
    return before.changes(after)
