"""Text and JSON views of a lock for `envlock show`."""

from __future__ import annotations

from typing import Any

from envlock.lock.cuda import UNKNOWN
from envlock.lock.lockfile import Lock, TargetLock


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
