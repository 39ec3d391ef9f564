#!/usr/bin/env bash
# Set up envlock, then do its main job on the bundled example: lock the stack, build the pinned image, train
# inside it twice, show the run records (their output hashes match), re-verify the last run, and train once more
# as a Slurm batch job (on the local two-node cluster) tracked in MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
envlock=$PWD/.venv/bin/envlock

# A fresh copy of the example: its lock and its base are then made on this machine. (The committed
# examples/*/envlock.lock pin the Debian base as built when they were locked; a machine whose mirror has moved
# since would rightly refuse to build them without that base.)
work=$(mktemp -d "${TMPDIR:-/tmp}/envlock-quickstart.XXXXXX")
cp examples/digits/pyproject.toml examples/digits/train.py "$work/"

echo
echo "== envlock lock   (examples/digits: scikit-learn + numpy, linux/amd64 and linux/arm64)"
"$envlock" lock -C "$work"
"$envlock" lock --check -C "$work"
"$envlock" show -C "$work" --platform linux/amd64

echo
echo "== envlock build  (a deterministic image tagged by the lock hash)"
"$envlock" build -C "$work"
"$envlock" build -C "$work"   # the second time is a no-op

echo
echo "== envlock run   (training inside the pinned image, twice, each run recorded)"
"$envlock" run -C "$work" --output out -- python train.py --out out
"$envlock" run -C "$work" --output out -- python train.py --out out
"$envlock" runs -C "$work"
last=$(ls "$work/.envlock/runs" | tail -n 1)
"$envlock" runs -C "$work" show "$last"

echo
echo "== envlock reproduce   (re-run the recorded command on the recorded code and compare the outputs)"
"$envlock" reproduce -C "$work" "$last"

echo
echo "== envlock submit --slurm   (the same training as a batch job on the local Slurm cluster, tracked in MLflow)"
submitted=$("$envlock" submit -C "$work" --mlflow "$work/mlruns" --output out --slurm --time=10 -- python train.py --out out)
echo "$submitted"
job_run=$(echo "$submitted" | awk '{print $2}' | tr -d :)
"$envlock" runs -C "$work" wait "$job_run" --timeout 600   # exits with the job's own status
"$envlock" runs -C "$work"
"$envlock" runs -C "$work" show "$job_run"
echo "-- the MLflow run envlock started; the metrics were logged by train.py inside the container:"
MLFLOW_ALLOW_FILE_STORE=true .venv/bin/python - "$work" "$job_run" <<'PY'
import json, sys
from pathlib import Path
from mlflow.tracking import MlflowClient
record = json.loads((Path(sys.argv[1]) / ".envlock/runs" / sys.argv[2] / "record.json").read_text())
run = MlflowClient(record["tracking"]["uri"]).get_run(record["tracking"]["run-id"])
print(f"MLflow run {run.info.run_id}: {run.info.status}, metrics {run.data.metrics}")
for key in sorted(k for k in run.data.tags if k.startswith("envlock.")):
    print(f"  {key} = {run.data.tags[key]}")
PY

echo
echo "== envlock show   (examples/torch-gpu: torch 2.5.1 with its CUDA 12.4 wheels)"
"$envlock" show -C examples/torch-gpu --platform linux/amd64 | head -n 8
