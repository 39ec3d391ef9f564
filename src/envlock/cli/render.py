"""Text and JSON views for the terminal: a lock (`show`), the bases, the runs and one run in full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envlock.cluster.slurm import JobState
from envlock.cluster.submit import describe
from envlock.lock.cuda import UNKNOWN
from envlock.lock.lockfile import Lock, TargetLock
from envlock.lock.recipes import load_recipe, recipe_names
from envlock.run.hostprobe import gpu_summary
from envlock.run.records import RunRecord, RunStore


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
        lines.append(f"local package {local.name} {local.version} from {where}{shown}")
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
        commit = (r.git.get("commit") or "-")[:10] + ("+" if r.git.get("dirty") else "")
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
    machine = f"{host.get('cpu-model')} · kernel {host.get('kernel')} · docker {host.get('docker-version')}"
    gpus = gpu_summary(host.get("gpus", []))
    return f"host      driver {host.get('driver-version') or 'none'} · GPUs {gpus} · {machine}"


def _code_line(record: RunRecord, saved_diff: bool) -> str:
    code = record.git.get("commit") or ("not a git repository" if record.git else "taken when the job starts")
    if not record.git.get("dirty"):
        return f"code      {code}"
    return f"code      {code}  (dirty: {'diff.patch saved' if saved_diff else 'no diff saved'})"


def _job_lines(record: RunRecord, store: RunStore, live: Mapping[str, JobState]) -> list[str]:
    job = record.scheduler or {}
    state = live[record.run_id].state if record.run_id in live else job.get("state", "")
    lines = [
        f"job       {describe(record, live)}  {state}  node {job.get('node') or '-'}".rstrip(),
        f"sbatch    {' '.join(job.get('options', [])) or '(no options)'}  submitted {job.get('submitted')}",
    ]
    for rank, node in store.node_records(record.run_id).items():
        lines.append(
            f"node {rank:<4} {(node.scheduler or {}).get('node') or '-'}: {node.status}, exit {node.exit_code} · "
            f"driver {node.host.get('driver-version') or 'none'} · GPUs {gpu_summary(node.host.get('gpus', []))}"
            + (f" · {node.error}" if node.error else "")
            + f"  ({store.for_node(rank).directory(record.run_id)})"
        )
    return lines


def run_details(record: RunRecord, store: RunStore, live: Mapping[str, JobState]) -> str:
    """`envlock runs show`: one record in full."""
    settings = " ".join(f"{k}={v}" for k, v in sorted(record.environment.items()) if not k.startswith("ENVLOCK_"))
    lines = [
        f"run       {record.run_id}  {record.status}, exit {record.exit_code}",
        *(_job_lines(record, store, live) if record.scheduler else []),
        f"command   {' '.join(record.command)}",
        f"image     {record.image_id}  ({record.image_reference})",
        *(f"pushed    {d}" for d in record.repo_digests),
        f"lock      {record.lock_hash}  (copy: {store.directory(record.run_id) / 'envlock.lock'})",
        _code_line(record, (store.directory(record.run_id) / "diff.patch").is_file()),
        _host_line(record),
        f"seed      {record.seed}  {settings}",
        f"time      {record.started} → {record.ended or '-'}",
        f"log       {store.log_path(record.run_id)}",
        *(f"preflight {note}" for note in record.preflight),
        *(f"output    {path}  {digest or 'not produced'}" for path, digest in record.outputs.items()),
    ]
    if record.reproduces:
        lines.append(f"reproduces {record.reproduces}")
    if record.tracking:
        lines.append(f"mlflow    {record.tracking.get('link') or record.tracking.get('run-id')}")
    if record.error:
        lines.append(f"error     {record.error}")
    if record.forced:
        lines.append("forced    yes: the preflight refused this host and --force overrode it")
    return "\n".join(lines)
