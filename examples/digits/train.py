"""Train a classifier on scikit-learn's bundled digits (no download) and write metrics and the model.

Deterministic: fixed split and seed, single-threaded BLAS; the same image gives the same bytes. With an MLflow
tracking URI (envlock run --mlflow URI), the metrics also go to the MLflow run envlock started for this run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
from pathlib import Path

# Set before scikit-learn loads numpy/scipy: their BLAS reads these once, at import (one thread: same bytes).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("ENVLOCK_OUTPUT_DIR", "out")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("ENVLOCK_SEED", "0")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    model = LogisticRegression(max_iter=2000, random_state=args.seed)
    model.fit(x_train, y_train)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, model.predict(x_test))), 6),
        "log_loss": round(float(log_loss(y_test, model.predict_proba(x_test))), 6),
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "seed": args.seed,
    }
    model_bytes = pickle.dumps(model, protocol=5)
    (args.out / "model.pkl").write_bytes(model_bytes)
    metrics["model_sha256"] = hashlib.sha256(model_bytes).hexdigest()
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, sort_keys=True))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        track(metrics)


def track(metrics: dict[str, object]) -> None:
    """Log to the MLflow run envlock started: with MLFLOW_RUN_ID set, start_run() continues that run."""
    import mlflow  # noqa: PLC0415

    with mlflow.start_run():
        mlflow.log_params({"seed": metrics["seed"], "model": "LogisticRegression", "max_iter": 2000})
        mlflow.log_metrics({"accuracy": float(metrics["accuracy"]), "log_loss": float(metrics["log_loss"])})
        mlflow.set_tag("model_sha256", str(metrics["model_sha256"]))


if __name__ == "__main__":
    main()
