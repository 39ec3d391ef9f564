#!/usr/bin/env bash
# Set up envlock, then do its main job on the bundled example, the main path first: lock the stack, build the
# pinned image, train inside it twice, show the run records (their output hashes match) and re-verify the last run
# (REPRODUCED), printing how long that took from the start. Then the slower parts: the same training as a Slurm
# batch job on a local two-node cluster, tracked in MLflow; and with --full, the linux/arm64 image built under
# qemu emulation and the run under Podman and Charliecloud (HPC runtimes without Docker), with what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
elapsed() { echo "$(($(date +%s) - started)) s"; }

full=0
case "${1:-}" in
  --full) full=1 ;;
  "") ;;
  *)
    echo "usage: bash scripts/quickstart.sh [--full]   (--full: also linux/arm64 under emulation, Podman, Charliecloud)" >&2
    exit 2
    ;;
esac

bash scripts/setup.sh --core
envlock=$PWD/.venv/bin/envlock

# A fresh copy of the example: its lock and its base are then made on this machine. (The committed
# examples/*/envlock.lock pin the Debian base as built when they were locked; a machine whose mirror has moved
# since would rightly refuse to build them without that base.) The main path locks this machine's platform only:
# linux/arm64's base is built under qemu (minutes), so it comes with --full, after the first REPRODUCED.
work=$(mktemp -d "${TMPDIR:-/tmp}/envlock-quickstart.XXXXXX")
cp examples/digits/pyproject.toml examples/digits/train.py "$work/"
sed -i 's|^platforms = .*|platforms = ["linux/amd64"]|' "$work/pyproject.toml"

echo
echo "== envlock lock   (examples/digits: scikit-learn + numpy, linux/amd64)"
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
echo "quickstart: lock → build → run → reproduce done, first REPRODUCED $(elapsed) after the start"

echo
echo "== envlock submit --slurm   (the same training as a batch job on a local Slurm cluster, tracked in MLflow)"
bash scripts/setup.sh --slurm
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

if [ "$full" = 1 ]; then
  bash scripts/setup.sh
  echo
  echo "== linux/arm64   (the example's second platform: its base built once under qemu, then the image)"
  sed -i 's|^platforms = .*|platforms = ["linux/amd64", "linux/arm64"]|' "$work/pyproject.toml"
  "$envlock" lock -C "$work"   # the amd64 pins are kept; arm64 is added
  built=$("$envlock" build -C "$work" --platform linux/arm64)
  echo "$built"
  arm64=$(echo "$built" | sed -n 's/.*-arm64 (\([^)]*\)).*/\1/p' | head -n 1)
  docker run --rm "$arm64" python -c "import numpy, platform; print('in the arm64 image:', platform.machine(), 'numpy', numpy.__version__)"

  echo
  echo "== envlock run --runtime podman | charliecloud   (the same image without Docker at launch)"
  "$envlock" run -C "$work" --runtime podman --output out -- python train.py --out out
  "$envlock" run -C "$work" --runtime charliecloud --output out -- python train.py --out out
  "$envlock" runs -C "$work"
  "$envlock" export enroot -C "$work" -o "$work/digits.sqsh"
fi
echo
echo "quickstart: all done in $(elapsed)"
