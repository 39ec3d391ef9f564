"""A stand-in for examples/digits' training where the example's size is not the point: a deterministic "model"
(a seeded linear congruential sequence and the installed six's version), written as out/model.pkl and
out/metrics.json, in the image of one small pinned package. The same image gives the same bytes."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
from pathlib import Path

import six  # the pinned package: its version is part of the outputs, so the image's contents are


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("ENVLOCK_OUTPUT_DIR", "out")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("ENVLOCK_SEED", "0")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    state, weights = args.seed, []
    for _ in range(4096):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        weights.append(state >> 40)
    model_bytes = pickle.dumps({"weights": weights, "six": six.__version__}, protocol=5)
    (args.out / "model.pkl").write_bytes(model_bytes)
    metrics = {"seed": args.seed, "six": six.__version__, "model_sha256": hashlib.sha256(model_bytes).hexdigest()}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
