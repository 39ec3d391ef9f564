"""Benchmark the first start right after a one-package change: envlock against the image with its bytecode inside.

Run from the repository root (stdlib only; needs the Docker engine and network access to PyPI for the locks):

    .venv/bin/python benchmarks/firstimport.py

The set is bigstack's --many (torch 2.5.1, transformers, datasets; wheels from the shared wheel cache). The day
before: a cold `envlock build` of the set with a fresh ENVLOCK_CACHE_DIR, and its background bytecode compile
awaited (the earlier image has been in use). Then six is added (`envlock lock` untimed, `envlock build` timed: it
seeds the new image's bytecode folder from the earlier one's, see envlock.engine.bytecode) and
`import torch, transformers, datasets` is timed inside the container at the first `envlock run` of the new image
and as the median of three more. The anchor, from the same run: the new image with everything on its sys.path
compiled inside it (a container committed, as pip compiles at install in a Dockerfile), started the same way with
`docker run --rm`. One table: envlock, the anchor, their ratio; the notes say how many pycs were seeded, how long
that took, whether the new image's own compile had ended at the first start, and when it ended. Images made here
are removed.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from bigstack import RECIPE, TIMER, Bench, fmt, import_seconds, number, subprocess_out
from build import envlock, run
from common import BIN, Failed, docker, print_notes, print_table, run_bench

ANCHOR = "envlock-bench-firstimport-anchor:light"
COMPILE_INSIDE = "import compileall, sys; [compileall.compile_dir(p, quiet=2, workers=0) for p in sys.path if p]"
WAIT_S = 900.0
TARGET = 1.2
ROWS = {
    "light": "one light package added s",
    "import-1": "imports, first start s",
    "import-2": "imports, later starts s (median of 3)",
}


class FirstImport(Bench):
    """bigstack's project and locks, the envlock side of one light change, and the anchor image."""

    def earlier_image_in_use(self) -> None:
        """The base lock built cold, and its background compile awaited."""
        self.write_project()
        (self.project / "envlock.lock").write_text(self.locks["base"], encoding="utf-8")
        for ref in self.refs.values():
            docker("image", "rm", ref)
        self.cache = self.fresh_cache()
        envlock("build", "-C", str(self.project), cache=self.cache)
        image = docker("image", "inspect", "-f", "{{.Id}}", self.refs["base"]).removeprefix("sha256:")
        marker = self.cache / "pyc" / image / ".compiled"
        start = time.perf_counter()
        while not marker.exists():
            if time.perf_counter() - start > WAIT_S:
                raise Failed("timeout", f"the earlier image's bytecode compile did not end within {WAIT_S:.0f} s")
            time.sleep(1)
        self.notes.append(f"the earlier image's background compile ended {time.perf_counter() - start:.0f} s after")

    def envlock_side(self) -> None:
        tool = "envlock"
        if self.step("light", tool, self.envlock_light):
            self.step("import-1", tool, self.envlock_first_import)
            self.step("import-2", tool, lambda: statistics.median(self.envlock_import() for _ in range(3)))

    def anchor_import(self) -> float:
        probe = TIMER.format(statement=self.statement)
        output = "\n".join(t for _, t in run(["docker", "run", "--rm", ANCHOR, "python", "-c", probe])[1])
        return import_seconds(output)

    def anchor_side(self) -> None:
        tool = "anchor"
        name = "envlock-bench-firstimport-compile"
        docker("rm", "-f", name)
        try:
            seconds = run(["docker", "run", "--name", name, "--network", "none", self.refs["light"], "python", "-c",
                           COMPILE_INSIDE])[0]  # fmt: skip
            self.notes.append(f"anchor: compiling the whole sys.path inside the image took {seconds:.0f} s")
            run(["docker", "commit", name, ANCHOR])
        except Failed as exc:
            self.failed.append("anchor image")
            self.notes.append(f"anchor image: {exc}")
            return
        finally:
            docker("rm", "-f", name)
        self.step("import-1", tool, self.anchor_import)
        self.step("import-2", tool, lambda: statistics.median(self.anchor_import() for _ in range(3)))

    def run_all(self) -> None:
        print("  envlock: the earlier image built and compiled", file=sys.stderr)
        self.earlier_image_in_use()
        print("  envlock: one light package added, then the first starts", file=sys.stderr)
        self.envlock_side()
        print("  anchor: the same image with its bytecode inside", file=sys.stderr)
        self.anchor_side()

    def cleanup(self) -> None:
        docker("image", "rm", ANCHOR)
        super().cleanup()


def report(bench: Bench) -> None:
    print(f"{subprocess_out([str(BIN / 'envlock'), '--version'])} | Docker engine "
          f"{docker('version', '-f', '{{.Server.Version}}')}")  # fmt: skip
    print(f"many set, light change + six 1.16.0; imports timed: {bench.statement}; one run of each cell")
    rows: list[tuple[str, ...]] = [("", "envlock", "anchor (bytecode in the image)", "envlock/anchor")]
    for row, label in ROWS.items():
        mine, theirs = bench.values.get((row, "envlock")), bench.values.get((row, "anchor"))
        a, b = number(mine), number(theirs)
        rows.append((label, fmt(mine, 3), fmt(theirs, 3), f"{a / b:.2f}x" if a and b else "n/a"))
    print_table(rows)
    print()
    first = [number(bench.values.get(("import-1", tool))) for tool in ("envlock", "anchor")]
    ratio = first[0] / first[1] if first[0] and first[1] else None
    verdict = "n/a" if ratio is None else "PASS" if ratio <= TARGET else "MISS"
    print(f"target: the first start's imports within {TARGET}x of the anchor's: {verdict} ({fmt(ratio)}x)")
    print_notes(bench.notes)


def main() -> int:
    if not (BIN / "envlock").exists():
        print(f"envlock not found in {BIN}: run this with the project's .venv/bin/python", file=sys.stderr)
        return 2
    if not docker("version", "-f", "{{.Server.Version}}"):
        print("the Docker engine is not reachable (`docker info`)", file=sys.stderr)
        return 2

    def make(root: Path) -> FirstImport:
        _, lines = envlock("base", "build", RECIPE, "--load")
        base_ref = next((text.split()[-1] for _, text in lines if text.startswith("loaded as ")), "")
        if not base_ref:
            raise Failed("FAIL", f"envlock base build {RECIPE} --load did not say what it loaded")
        return FirstImport(root, base_ref, "many")

    return run_bench("envlock-bench-firstimport-", make, [("the runs", FirstImport.run_all)], report)


if __name__ == "__main__":
    sys.exit(main())
