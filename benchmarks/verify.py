"""Benchmark `envlock verify BUNDLE` on a bundle with a large image archive, against the floor any verification of
the same bytes must pay: reading them once (`sha256sum` of the bundle) and unpacking them once (`tar -x`).

Run from the repository root (stdlib only; needs the Docker engine and network access to PyPI for the lock and the
wheels):

    .venv/bin/python benchmarks/verify.py [--repeat N]

Untimed setup: a throw-away project pinning a scientific stack (numpy, scipy, pandas, pyarrow, scikit-learn: an
image of about 600 MB) for linux/amd64, with an ENVLOCK_CACHE_DIR of its own (holding only the user's bases/,
hard-linked), a signing key, a git repository; locked, built, one signed `envlock run` writing an output, and
`envlock bundle RUN --with-image`. Then N rounds of: (a) `envlock verify BUNDLE --key PUB` (unpack with envlock's
own tar reader, hash every file against bundle.json, the attestation's signature, the record field by field, the
image archive by ID, the SBOM remade, the git bundle), (b) `sha256sum BUNDLE`, (c) `tar -xf BUNDLE` into an empty
folder. Each cell is the best and the median of N; the ratios are envlock over each floor. The image and the
directories made here are removed. Exit status 1 when any command failed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    BIN,
    Cell,
    Failed,
    best_median,
    built_image,
    docker,
    docker_bench_args,
    print_notes,
    print_table,
    ratios,
    run_bench,
    seed_cache,
    timed,
)

NAME = "envlock-bench-verify"
DEPENDENCIES = ("numpy==2.2.6", "scipy==1.15.3", "pandas==2.2.3", "pyarrow==20.0.0", "scikit-learn==1.6.1")
TRAIN = "import json, os, numpy\nos.makedirs('out', exist_ok=True)\njson.dump({'x': float(numpy.arange(4).sum())}, open('out/metrics.json', 'w'))\n"  # noqa: E501


class VerifyBench:
    """The project, its bundle, and the measured rounds."""

    def __init__(self, root: Path, repeat: int) -> None:
        self.root, self.repeat = root, repeat
        self.project = root / "project"
        self.bundle = root / "run.tar"
        self.key = root / "keys" / "signer.pem"
        self.env = {**os.environ, "ENVLOCK_CACHE_DIR": str(root / "cache"), "ENVLOCK_SIGNING_KEY": str(self.key)}
        self.image_id = ""
        self.samples: dict[str, list[float]] = {"verify": [], "sha256sum": [], "tar -x": []}
        self.failed: list[str] = []
        self.notes: list[str] = []

    def envlock(self, *args: str) -> tuple[float, str]:
        """One timed envlock command in the project."""
        return timed([str(BIN / "envlock"), *args], env=self.env)

    def setup(self) -> None:
        """Project, lock, build, signed run, bundle with the image (untimed)."""
        self.project.mkdir()
        deps = ", ".join(f'"{d}"' for d in DEPENDENCIES)
        (self.project / "pyproject.toml").write_text(
            f'[project]\nname = "{NAME}"\nversion = "0"\ndependencies = [{deps}]\n\n'
            '[tool.envlock]\nplatforms = ["linux/amd64"]\noutputs = ["out/metrics.json"]\n'
        )
        (self.project / "train.py").write_text(TRAIN)
        (self.project / ".gitignore").write_text(".envlock/\nout/\n")
        for args in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=b", "-c", "user.email=b@e", "commit", "-qm", "b"],
        ):
            subprocess.run(["git", "-C", str(self.project), *args], check=True, capture_output=True)
        seed_cache(self.root / "cache")
        timed([str(BIN / "envlock"), "key", "generate", "-o", str(self.key)], env=self.env)
        self.envlock("lock", "-C", str(self.project))
        _, out = self.envlock("build", "-C", str(self.project))
        self.image_id = built_image(out)[1]
        self.envlock("run", "-C", str(self.project), "--", "python", "train.py")
        listed = subprocess.run(
            [str(BIN / "envlock"), "runs", "-C", str(self.project), "--json"],
            env=self.env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        last = json.loads(listed)[-1]["run_id"]
        self.envlock("bundle", last, "-C", str(self.project), "-o", str(self.bundle), "--with-image")
        size = self.bundle.stat().st_size
        self.notes.append(f"bundle {size / 1e6:.0f} MB (image archive inside), image {self.image_id[:19]}")

    def rounds(self) -> None:
        """N rounds of verify, sha256sum, tar -x."""
        public = f"{self.key}.pub"
        for _ in range(self.repeat):
            try:
                seconds, out = self.envlock("verify", str(self.bundle), "--key", public)
                if "VERIFIED" not in out:
                    raise Failed("FAIL", "verify did not say VERIFIED")
                self.samples["verify"].append(seconds)
                self.samples["sha256sum"].append(timed(["sha256sum", str(self.bundle)])[0])
                with tempfile.TemporaryDirectory(dir=self.root) as into:
                    self.samples["tar -x"].append(timed(["tar", "-xf", str(self.bundle), "-C", into])[0])
            except Failed as exc:
                self.failed.append(f"{exc.label}: {exc}")
                return

    def cleanup(self) -> None:
        """The image goes; the temp directory goes with run_bench."""
        if self.image_id:
            docker("rmi", "-f", self.image_id)

    def cell(self, name: str) -> Cell:
        """(best, median) of a measure, or FAIL."""
        found = self.samples[name]
        return (min(found), statistics.median(found)) if found else "FAIL"

    def report(self) -> None:
        """The table: each measure, and envlock's ratio over it."""
        verify = self.cell("verify")
        rows = [("measure", "best s", "median s", "verify / this (best, median)")]
        for name in ("verify", "sha256sum", "tar -x"):
            cell = self.cell(name)
            ratio = ratios(verify, cell)
            shown = f"{ratio[0]:.2f}x, {ratio[1]:.2f}x" if ratio else "-"
            best, median = (f"{cell[0]:.2f}", f"{cell[1]:.2f}") if not isinstance(cell, str) else (cell, cell)
            rows.append((name, best, median, shown))
        print_table(rows)
        self.notes += [f"{name}: {best_median(found)}" for name, found in self.samples.items() if found]
        self.notes += self.failed
        print_notes(self.notes)


def main(argv: list[str] | None = None) -> int:
    """Set up, measure, report."""
    _, args = docker_bench_args(__doc__, 3, "rounds of each measure (default 3)", argv)

    def make(root: Path) -> VerifyBench:
        return VerifyBench(root, args.repeat)

    return run_bench(
        "envlock-bench-verify-",
        make,
        [("setup", VerifyBench.setup), ("rounds", VerifyBench.rounds)],
        VerifyBench.report,
    )


if __name__ == "__main__":
    sys.exit(main())
