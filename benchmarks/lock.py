"""Benchmark `envlock lock` against raw `uv pip compile` and `pip-compile --generate-hashes`.

Run from the repository root (stdlib only; needs network access to PyPI):

    .venv/bin/python benchmarks/lock.py [--sets small,torch] [--repeat N] [--skip-pip-compile]

For each input set ("small" = numpy, scipy, pandas, scikit-learn, matplotlib; "torch" = torch==2.5.1) it
builds a throw-away project and times, cold (fresh empty cache dir) and warm (the same cache dir again):

- `envlock lock -C PROJECT` (envlock.lock deleted before every run; UV_CACHE_DIR points at the cache),
- the `uv pip compile --format pylock.toml ...` command envlock runs internally, with the same flags,
- `pip-compile --generate-hashes --index-url https://pypi.org/simple --cache-dir CACHE` with pip's own
  configuration ignored (PIP_CONFIG_FILE=/dev/null, PIP_INDEX_URL & co. removed),

and `envlock lock --check` on the locked project (best of 5). The binaries are taken from the directory of
the running interpreter (.venv/bin). With --repeat N each cell is the median of N cold/warm pairs. One
table is printed, then the targets: envlock lock within 1.3x of raw uv; lock --check under 0.3 s.
Exit status 1 when any command failed or timed out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import BIN, Failed, print_notes, print_table, timed

INDEX = "https://pypi.org/simple"
PLATFORM, UV_PLATFORM, PYTHON = "linux/amd64", "x86_64-manylinux_2_36", "3.11"
SETS = {"small": ("numpy", "scipy", "pandas", "scikit-learn", "matplotlib"), "torch": ("torch==2.5.1",)}
UV_RATIO_TARGET, CHECK_TARGET = 1.3, 0.3
PIP_DROPPED = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_NO_CACHE_DIR")
TOOLS = ("envlock", "uv", "pip-compile")
UV_KEPT = ("UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_HTTP_RETRIES", "UV_INSECURE_HOST", "UV_CONCURRENT_DOWNLOADS")
Cell = float | str  # seconds, or a short label ("FAIL", "timeout", "n/a", "skipped")


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def uv_env(cache: Path) -> dict[str, str]:
    """For envlock and raw uv alike: like envlock's uv environment (only network UV_* settings), our cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") or k in UV_KEPT}
    env.setdefault("UV_HTTP_RETRIES", "1")
    return env | {"UV_CACHE_DIR": str(cache)}


def pip_env(cache: Path) -> dict[str, str]:
    """No pip.conf, no index/find-links settings from the environment; pip's temp files kept beside the cache."""
    env = {k: v for k, v in os.environ.items() if k not in PIP_DROPPED}
    tmp = cache.with_name(f"{cache.name}-tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    return env | {"PIP_CONFIG_FILE": os.devnull, "TMPDIR": str(tmp)}


def tools(
    project: Path, work: Path
) -> dict[str, tuple[Callable[[Path], list[str]], Callable[[Path], dict[str, str]], Path]]:
    """Per tool: command(cache), env(cache), and the output file deleted before every run."""
    requirements = work / "requirements.in"
    uv_out, pip_out = work / "pylock.toml", work / "requirements.txt"
    uv = [str(BIN / "uv"), "pip", "compile", str(requirements), "--format", "pylock.toml", "--output-file"]
    uv += [str(uv_out), "--python-platform", UV_PLATFORM, "--python-version", PYTHON]
    uv += ["--no-config", "--quiet", "--no-header", "--index-url", INDEX]
    pip = [str(BIN / "pip-compile"), str(requirements), "--generate-hashes", "--strip-extras", "--no-header", "-v"]
    pip += ["--output-file", str(pip_out), "--index-url", INDEX, "--pip-args", "--progress-bar off", "--cache-dir"]
    return {
        "envlock": (lambda _: [str(BIN / "envlock"), "lock", "-C", str(project)], uv_env, project / "envlock.lock"),
        "uv": (lambda _: uv, uv_env, uv_out),
        "pip-compile": (lambda cache: [*pip, str(cache)], pip_env, pip_out),
    }


def bench_set(name: str, root: Path, args: argparse.Namespace, notes: list[str]) -> dict[tuple[str, str], Cell]:
    """Cells keyed (phase, tool), plus ("check", "envlock") for `lock --check`."""
    project, work = root / name / "project", root / name / "raw"
    project.mkdir(parents=True)
    work.mkdir()
    deps = ", ".join(f'"{r}"' for r in SETS[name])
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "bench-{name}"\nversion = "0"\ndependencies = [{deps}]\n\n'
        f'[tool.envlock]\nplatforms = ["{PLATFORM}"]\n',
        encoding="utf-8",
    )
    (work / "requirements.in").write_text("\n".join(SETS[name]) + "\n", encoding="utf-8")
    cells: dict[tuple[str, str], Cell] = {}
    for tool, (command, make_env, output) in tools(project, work).items():
        if tool == "pip-compile" and args.skip_pip_compile:
            cells["cold", tool] = cells["warm", tool] = "skipped"
            continue
        runs: dict[str, list[float]] = {"cold": [], "warm": []}
        try:
            for i in range(args.repeat):
                cache = root / name / f"{tool}-cache-{i}"
                for phase, phase_runs in runs.items():
                    output.unlink(missing_ok=True)
                    seconds, output_text = timed(command(cache), make_env(cache))
                    phase_runs.append(seconds)
                    print(f"  {name:<6} {phase:<5} {tool:<12} {seconds:8.2f} s", file=sys.stderr)
                    if tool == "pip-compile" and i == 0:
                        lines = [line.strip() for line in output_text.splitlines()]
                        fetched = sum(1 for s in lines if s.startswith("Downloading ") and ".metadata" not in s)
                        hashed = sum(1 for s in lines if s.startswith("Hashing "))
                        notes.append(
                            f"pip-compile {name} {phase}: {fetched} whole distribution files downloaded to read "
                            f"metadata; {hashed} files downloaded to compute their hashes"
                        )
                if i == 0:
                    notes.append(f"{tool} {name}: its cache dir holds {size_mb(cache):.1f} MB after the cold+warm runs")
        except Failed as exc:
            phase = "warm" if len(runs["cold"]) > len(runs["warm"]) else "cold"
            notes.append(f"{tool} {name} {phase}: {exc}")
            cells[phase, tool] = exc.label
        for phase, timings in runs.items():
            cells.setdefault((phase, tool), statistics.median(timings) if timings else "n/a")
        if tool == "envlock":
            cells["check", tool] = bench_check(project, notes, name)
    return cells


def bench_check(project: Path, notes: list[str], name: str) -> Cell:
    """Best of 5 `envlock lock --check` on the freshly locked project."""
    if not (project / "envlock.lock").exists():
        return "n/a"
    try:
        return min(
            timed([str(BIN / "envlock"), "lock", "--check", "-C", str(project)], dict(os.environ))[0] for _ in range(5)
        )
    except Failed as exc:
        notes.append(f"envlock lock --check {name}: {exc}")
        return exc.label


def fmt(cell: Cell | None, digits: int = 2) -> str:
    return f"{cell:.{digits}f}" if isinstance(cell, float) else str(cell or "n/a")


def ratio(top: Cell, bottom: Cell) -> float | None:
    return top / bottom if isinstance(top, float) and isinstance(bottom, float) and bottom > 0 else None


def verdict(values: list[tuple[float, str]], limit: float, unit: str) -> str:
    if not values:
        return "n/a (nothing measured)"
    worst, where = max(values)
    return f"{'PASS' if worst <= limit else 'MISS'} (worst {worst:.2f}{unit}: {where})"


def report(results: dict[str, dict[tuple[str, str], Cell]], repeat: int, notes: list[str]) -> None:
    versions = [
        subprocess.run([str(BIN / t), "--version"], capture_output=True, text=True, check=False).stdout.strip()
        for t in TOOLS
        if (BIN / t).exists()
    ]
    print(" | ".join(v.splitlines()[0] for v in versions if v))
    print(f"target {PLATFORM}, Python {PYTHON} ({UV_PLATFORM}); index {INDEX}; median of {repeat} run(s) per cell")
    rows = [("set", "run", "envlock s", "uv s", "pip-compile s", "envlock/uv", "pip-compile/envlock")]
    over_uv: list[tuple[float, str]] = []
    for name, cells in results.items():
        for phase in ("cold", "warm"):
            env_s, uv_s, pip_s = (cells.get((phase, tool), "n/a") for tool in TOOLS)
            over, speed = ratio(env_s, uv_s), ratio(pip_s, env_s)
            if over is not None:
                over_uv.append((over, f"{name} {phase}"))
            mark = "n/a" if over is None else f"{over:.2f}x {'PASS' if over <= UV_RATIO_TARGET else 'MISS'}"
            rows.append(
                (name, phase, fmt(env_s), fmt(uv_s), fmt(pip_s), mark, "n/a" if speed is None else f"{speed:.1f}x")
            )
    print_table(rows, labels=2)
    checks = {name: cells.get(("check", "envlock"), "n/a") for name, cells in results.items()}
    print()
    shown = (f"{n} {fmt(c, 3)}{' s' if isinstance(c, float) else ''}" for n, c in checks.items())
    print("envlock lock --check (best of 5): " + ", ".join(shown))
    print(f"target: envlock lock within {UV_RATIO_TARGET}x of raw uv: {verdict(over_uv, UV_RATIO_TARGET, 'x')}")
    measured = [(c, n) for n, c in checks.items() if isinstance(c, float)]
    print(f"target: lock --check under {CHECK_TARGET} s: {verdict(measured, CHECK_TARGET, ' s')}")
    print_notes(notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sets", default="small,torch", help="comma-separated input sets: small, torch")
    parser.add_argument("--repeat", type=int, default=1, help="cold/warm pairs per cell; the median is shown")
    parser.add_argument("--skip-pip-compile", action="store_true", help="time envlock and uv only")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not names or any(n not in SETS for n in names):
        parser.error(f"--sets takes a comma-separated subset of: {', '.join(SETS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    needed = [t for t in TOOLS if not (t == "pip-compile" and args.skip_pip_compile)]
    if missing := [t for t in needed if not (BIN / t).exists()]:
        parser.error(f"{', '.join(missing)} not found in {BIN}: run this with the project's .venv/bin/python")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="envlock-bench-", ignore_cleanup_errors=True) as tmp:
        results = {name: bench_set(name, Path(tmp), args, notes) for name in names}
    report(results, args.repeat, notes)
    failed = [c for cells in results.values() for c in cells.values() if c in ("FAIL", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
