"""Benchmark hashing a run's declared inputs: envlock cold (no stat cache) and warm (stat cache) against `sha256sum`.

Run from the repository root (stdlib only; needs coreutils' sha256sum and find/xargs):

    PYTHONPATH=src .venv/bin/python benchmarks/inputs.py [--size GB] [--repeat N]

A synthetic dataset of --size GB (default 2) is written into a temp dir: half in many small files (64 KiB each,
in 64 subdirectories), half in four large files. The files' bytes are then in the page cache for every contender
(the first sha256sum pass reads them in), so "cold" means without envlock's stat cache, not from disk. Each round
times `find DIR -type f -print0 | xargs -0 sha256sum` (one process per xargs batch, one file after another),
envlock's hash_inputs with a fresh stat cache, and hash_inputs again with the stat cache the cold pass filled (read
back from its file each time). Each cell is the best and the median of N; GB/s from the best. Targets: cold within
1.2x of sha256sum (medians), warm under 0.2 s. The temp dir is removed. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_notes, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from envlock.run.inputs import StatCache, hash_inputs

SMALL = 64 * 1024
LARGE_FILES = 4


def generate(root: Path, size: int) -> int:
    """Write the dataset; returns the number of files."""
    block = os.urandom(1 << 20)
    small_total = size // 2
    count = 0
    for index in range(small_total // SMALL):
        directory = root / "small" / f"{index % 64:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        offset = (index * 4099) % (len(block) - SMALL)
        (directory / f"{index:06d}.bin").write_bytes(index.to_bytes(8, "little") + block[offset : offset + SMALL - 8])
        count += 1
    large = (size - small_total) // LARGE_FILES
    (root / "large").mkdir(parents=True, exist_ok=True)
    for index in range(LARGE_FILES):
        with (root / "large" / f"part-{index}.bin").open("wb") as handle:
            written = 0
            while written < large:
                chunk = index.to_bytes(8, "little") + block[8 : min(len(block), large - written)]
                handle.write(chunk)
                written += len(chunk)
        count += 1
    return count


def time_sha256sum(root: Path) -> float:
    start = time.perf_counter()
    script = 'find "$1" -type f -print0 | xargs -0 sha256sum > /dev/null'
    subprocess.run(["sh", "-c", script, "sh", str(root)], check=True)
    return time.perf_counter() - start


def time_envlock(root: Path, cache_file: Path) -> float:
    start = time.perf_counter()
    hash_inputs(root, ("data",), StatCache(cache_file))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=2.0, help="dataset size in GB (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args()
    size = int(args.size * 1e9)
    with tempfile.TemporaryDirectory(prefix="envlock-bench-inputs-") as tmp:
        root = Path(tmp)
        data = root / "data"
        start = time.perf_counter()
        files = generate(data, size)
        made = time.perf_counter() - start
        time.sleep(1.2)  # older than the stat cache's racy window, so the cold pass can fill the cache
        time_sha256sum(data)  # the page cache holds every byte now, for every contender alike
        samples: dict[str, list[float]] = {"sha256sum": [], "envlock cold": [], "envlock warm": []}
        for round_ in range(args.repeat):
            samples["sha256sum"].append(time_sha256sum(data))
            cache_file = root / f"stats-{round_}.json"
            samples["envlock cold"].append(time_envlock(root, cache_file))
            samples["envlock warm"].append(time_envlock(root, cache_file))
    gb = size / 1e9
    base = statistics.median(samples["sha256sum"])
    rows = [("", "best s", "median s", "GB/s (best)", "/ sha256sum (median)")]
    for label, values in samples.items():
        best, median = min(values), statistics.median(values)
        rows.append((label, f"{best:.3f}", f"{median:.3f}", f"{gb / best:.2f}", f"{median / base:.3f}"))
    print(f"dataset: {gb:.2f} GB in {files} files ({files - LARGE_FILES} x 64 KiB, {LARGE_FILES} large), "
          f"written in {made:.1f} s; {os.cpu_count()} CPUs; {args.repeat} rounds")  # fmt: skip
    print_table(rows)
    cold = statistics.median(samples["envlock cold"]) / base
    warm = statistics.median(samples["envlock warm"])
    print_notes(
        [
            f"cold / sha256sum = {cold:.2f} (target <= 1.2): {'met' if cold <= 1.2 else 'MISSED'}",
            f"warm = {warm:.3f} s (target < 0.2 s): {'met' if warm < 0.2 else 'MISSED'}",
        ]
    )
    return 0 if cold <= 1.2 and warm < 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
