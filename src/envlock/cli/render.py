"""Text and JSON views for the terminal: a lock (`show`), the bases, the runs and one run in full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envlock.cluster.slurm import JobState
from envlock.cluster.submit import describe
from envlock.lock.cuda import UNKNOWN
from envlock.lock.lockfile import Lock, TargetLock
from envlock.lock.recipes import load_recipe, recipe_names
from envlock.paths import DIFF_FILE, LOCK_FILE, VERDICT_FILE
from envlock.run.hostprobe import gpu_summary
from envlock.run.records import RunRecord, RunStore
from envlock.run.schema import JobRecord


def lock_summary(lock: Lock, platforms: list[str], stale: str) -> dict[str, Any]:
    """The JSON form: meta, environment and, per platform, CUDA summary and every package with its files."""
    return {
        "lock-hash": lock.lock_hash,
        "tag": lock.short_hash,
        "input-hash": lock.input_hash,
        "inputs": stale,
        "resolver": lock.resolver,
        "python": lock.python,
        "base": {"name": lock.base.name, "kind": lock.base.kind, "sha256": lock.base.sha256},
        "source-date-epoch": lock.source_date_epoch,
        "indexes": list(lock.indexes),
        "system-packages": list(lock.system_packages),
        "local-packages": [p.as_dict() for p in lock.local_packages],
        "targets": {
            t.platform: {
                "base": {"id": t.base.id, "debian": t.base.debian} if t.base else None,
                "cuda": t.cuda.as_dict(),
                "packages": [
                    {
                        "name": p.name,
                        "version": p.version,
                        "files": [{"name": f.name, "url": f.url, "sha256": f.sha256} for f in p.files],
                    }
                    for p in t.packages
                ],
            }
            for t in lock.targets
            if t.platform in platforms
        },
    }


def _cuda_lines(target: TargetLock) -> list[str]:
    cuda = target.cuda
    if cuda.kind == "cpu":
        return ["  CPU only: no CUDA libraries locked; any driver (or none) will do"]
    origin = "from the wheels" if cuda.source == "wheels" else "from the base image"
    archs = " ".join(cuda.archs) if cuda.archs else UNKNOWN
    return [
        f"  CUDA {cuda.version} (runtime {cuda.runtime}, {origin})",
        f"  cuDNN {cuda.cudnn} · NCCL {cuda.nccl} · cuBLAS {cuda.cublas}",
        f"  driver >= {cuda.driver_min} (full) · >= {cuda.driver_min_compat} (minor-version compatibility)",
        f"  GPU architectures: {archs}",
    ]


def render_lock(lock: Lock, platforms: list[str], stale: str) -> str:
    """Readable summary: one block per platform, packages listed with versions."""
    lines = [
        f"envlock.lock  {lock.lock_hash}  (image tag {lock.short_hash}; inputs {stale})",
        f"Python {lock.python} · base {lock.base.name} ({lock.base.kind} {lock.base.sha256[:12]})"
        f" · resolved by {lock.resolver}",
    ]
    for local in lock.local_packages:
        scripts = [n for g, n, _ in local.entry_points if g == "console_scripts"]
        shown = f"; scripts: {', '.join(scripts)}" if scripts else ""
        where = "/work" if local.path == "." else f"/work/{local.path}"
        version = "(version of the commit that runs)" if local.version_from == "vcs" else local.version
        lines.append(f"local package {local.name} {version} from {where}{shown}")
    for target in lock.targets:
        if target.platform not in platforms:
            continue
        lines += ["", f"{target.platform}  {len(target.packages)} packages  ({target.python_platform})"]
        if target.base is not None:
            lines.append(f"  base {target.base.id[:19]} with {len(target.base.debian)} Debian packages")
        else:
            lines.append("  base not pinned here (locked on another architecture, or without mmdebstrap)")
        lines += _cuda_lines(target)
        width = max((len(p.name) for p in target.packages), default=0)
        lines += [f"    {p.name.ljust(width)}  {p.version}" for p in target.packages]
    return "\n".join(lines)


def base_rows(built: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each recipe with the bases built from its current version on this machine."""
    rows: list[dict[str, Any]] = []
    for name in recipe_names():
        recipe = load_recipe(name)
        mine = [b for b in built if b["recipe"] == name and b["recipe-sha256"] == recipe.sha256]
        rows.append({"name": name, "python": recipe.python, "recipe-sha256": recipe.sha256, "built": mine})
    return rows


def runs_table(records: list[RunRecord], places: dict[str, str]) -> str:
    """`envlock runs`: one line per run."""
    width = max(5, *(len(place) for place in places.values()))
    lines = [
        f"{'RUN':<26} {'STATUS':<11} {'EXIT':>4}  {'WHERE':<{width}} {'IMAGE':<19} {'LOCK':<12} {'COMMIT':<13} COMMAND"
    ]
    for r in records:
        commit = ((r.git.commit if r.git else None) or "-")[:10] + ("+" if r.git and r.git.dirty else "")
        code = "-" if r.exit_code is None else str(r.exit_code)
        lock = r.lock_hash.removeprefix("sha256:")[:12]
        lines.append(
            f"{r.run_id:<26} {r.status:<11} {code:>4}  {places[r.run_id]:<{width}} {r.image_id[:19]:<19} {lock:<12} "
            f"{commit:<13} {' '.join(r.command)}"
        )
    return "\n".join(lines)


def _host_line(record: RunRecord) -> str:
    host = record.host
    if not host:
        why = "the job's task probes the node it runs on" if record.status == "queued" else "the command never started"
        return f"host      not probed: {why}"
    machine = f"{host.cpu_model} · kernel {host.kernel} · docker {host.docker_version}"
    return f"host      driver {host.driver_version or 'none'} · GPUs {gpu_summary(host.gpus)} · {machine}"


def _code_lines(record: RunRecord, saved_diff: bool) -> list[str]:
    """The commit; the uncommitted diff (saved or not); the untracked files, saved (restored by reproduce) or not."""
    git = record.git
    code = (git.commit or "not a git repository") if git else "taken when the job starts"
    if not (git and git.dirty):
        return [f"code      {code}"]
    parts = []
    if git.diff_sha256:
        parts.append("diff.patch saved" if saved_diff else "diff.patch missing")
    if git.untracked:
        parts.append(f"{len(git.untracked)} untracked: {len(git.saved)} saved, {len(git.unsaved)} not")
    lines = [f"code      {code}  (dirty: {', '.join(parts)})"]
    lines += [f"untracked {name}  saved (sha256 {digest[:12]})" for name, digest in git.saved.items()]
    lines += [f"untracked {name}  NOT saved: {git.skipped.get(name, 'named only')}" for name in git.unsaved]
    return lines


def _inputs_lines(record: RunRecord) -> list[str]:
    inputs = record.inputs
    if inputs is None:
        return []
    lines = [f"inputs    {' '.join(inputs.paths)}  ({len(inputs.files)} files, digest {inputs.digest[:12]})"]
    lines += [f"input     {path}  missing" for path in inputs.missing]
    lines += [
        f"link      {link.input} <- run {link.run} ({link.output}, sha256 {link.sha256[:12]})" for link in record.links
    ]
    lines += [f"TAINTED   input {path} {how} while the run ran" for path, how in sorted(record.tainted.items())]
    return lines


def _verdict_lines(record: RunRecord, store: RunStore) -> list[str]:
    if not record.reproduces:
        return []
    verdict = store.verdict(record.run_id) or {}
    outcome = verdict.get("verdict") or ("REPRODUCED" if verdict.get("reproduced") else "no verdict kept")
    where = store.directory(record.run_id) / VERDICT_FILE
    return [f"reproduces {record.reproduces}", f"verdict   {outcome}  ({where})"]


def _job_lines(
    record: RunRecord, job: JobRecord, store: RunStore, live: Mapping[str, JobState], *, nodes: bool = True
) -> list[str]:
    state = live[record.run_id].state if record.run_id in live else job.state or ""
    lines = [
        f"job       {describe(record, live)}  {state}  node {job.node or '-'}".rstrip(),
        f"sbatch    {' '.join(job.options) or '(no options)'}  submitted {job.submitted}",
    ]
    others = store.node_records(record.run_id)
    if others and not nodes:
        return [*lines, f"nodes     {len(others)} more, not shown: their records are outside this run's attestation"]
    for rank, node in others.items():
        name = (node.scheduler.node if node.scheduler else None) or "-"
        driver = (node.host.driver_version if node.host else None) or "none"
        gpus = gpu_summary(node.host.gpus if node.host else ())
        lines.append(
            f"node {rank:<4} {name}: {node.status}, exit {node.exit_code} · driver {driver} · GPUs {gpus}"
            + (f" · {node.error}" if node.error else "")
            + f"  ({store.for_node(rank).directory(record.run_id)})"
        )
    return lines


def run_details(record: RunRecord, store: RunStore, live: Mapping[str, JobState], *, nodes: bool = True) -> str:
    """`envlock runs show`: one record in full (`nodes=False`: without the other nodes' records, which no
    attestation of the run covers)."""
    settings = " ".join(f"{k}={v}" for k, v in sorted(record.environment.items()) if not k.startswith("ENVLOCK_"))
    lines = [
        f"run       {record.run_id}  {record.status}, exit {record.exit_code}",
        *(_job_lines(record, record.scheduler, store, live, nodes=nodes) if record.scheduler else []),
        f"command   {' '.join(record.command)}",
        f"image     {record.image_id}  ({record.image_reference})",
        *(f"pushed    {d}" for d in record.repo_digests),
        f"lock      {record.lock_hash}  (copy: {store.directory(record.run_id) / LOCK_FILE})",
        *_code_lines(record, (store.directory(record.run_id) / DIFF_FILE).is_file()),
        *_inputs_lines(record),
        _host_line(record),
        *([f"gpus      {'yes' if record.gpus else 'no (--no-gpus, or none here)'}"] if record.gpus is not None else []),
        f"seed      {record.seed}  {settings}",
        f"time      {record.started} → {record.ended or '-'}",
        f"log       {store.log_path(record.run_id)}",
        *(f"preflight {note}" for note in record.preflight),
        *(f"output    {path}  {digest or 'not produced'}" for path, digest in record.outputs.items()),
    ]
    lines += _verdict_lines(record, store)
    if record.params:
        lines += [f"param     {key} = {value}" for key, value in sorted(record.params.values.items())]
        lines += [f"params    {path}  sha256 {digest}" for path, digest in sorted(record.params.files.items())]
    if record.chain:
        lines.append(f"chain     {record.chain}")
    if record.tracking:
        lines.append(f"mlflow    {record.tracking.link or record.tracking.run_id}")
    if record.error:
        lines.append(f"error     {record.error}")
    if record.forced:
        lines.append("forced    yes: the preflight refused this host and --force overrode it")
    return "\n".join(lines)
