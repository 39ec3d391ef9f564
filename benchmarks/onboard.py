"""Time a new user's first hour: `envlock init` → `lock` → `build` → `run` on a requirements-only project.

Run from the repository root (needs the Docker engine, mmdebstrap and network access to PyPI):

    .venv/bin/python benchmarks/onboard.py [--warm-bases]

The project is a requirements.txt (numpy, scikit-learn) and a small training script, in a temp directory, with an
ENVLOCK_CACHE_DIR of its own: nothing is cached, as for a new user (with --warm-bases the user's built bases are
hard-linked in, so the mmdebstrap step is left out). Each step is timed once; then `init` and `lock` again
(the no-ops). The image and the directories made here are removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TRAIN = """import json, sklearn, numpy
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
x, y = load_digits(return_X_y=True)
model = LogisticRegression(max_iter=200).fit(x, y)
print(json.dumps({"accuracy": round(model.score(x, y), 4), "sklearn": sklearn.__version__}))
"""


def main() -> int:
    """Run the steps, print one table."""
    work = Path(tempfile.mkdtemp(prefix="envlock-onboard-"))
    project, cache = work / "firsthour", work / "cache"
    project.mkdir()
    (project / "requirements.txt").write_text("numpy==2.2.6\nscikit-learn==1.6.1\n")
    (project / "train.py").write_text(TRAIN)
    if "--warm-bases" in sys.argv:
        shutil.copytree(Path.home() / ".cache" / "envlock" / "bases", cache / "bases", copy_function=os.link)
    env = {**os.environ, "ENVLOCK_CACHE_DIR": str(cache)}
    steps = [
        ("envlock init", ["init"]),
        ("envlock lock", ["lock"]),
        ("envlock build", ["build"]),
        ("envlock run -- python train.py", ["run", "--", "python", "train.py"]),
        ("envlock run (again)", ["run", "--", "python", "train.py"]),
        ("envlock run -- true", ["run", "--", "true"]),
        ("envlock init (again)", ["init"]),
        ("envlock lock (again)", ["lock"]),
    ]
    failed = 0
    try:
        for label, args in steps:
            start = time.perf_counter()
            done = subprocess.run(
                [str(BIN / "envlock"), args[0], "-C", str(project), *args[1:]],
                capture_output=True, text=True, check=False, env=env,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            failed |= done.returncode != 0
            last = (done.stdout.strip().splitlines() or [done.stderr.strip()])[-1][:70]
            print(f"{label:<34} {seconds:7.1f} s  exit {done.returncode}  {last}")
    finally:
        subprocess.run(["docker", "image", "rm", "-f", "firsthour"], capture_output=True, check=False)
        images = subprocess.run(
            ["docker", "images", "-q", "firsthour"], capture_output=True, text=True, check=False
        ).stdout.split()
        if images:
            subprocess.run(["docker", "image", "rm", "-f", *images], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
