#!/usr/bin/env bash
# Check a GPU host without Docker or network: envlock's NVML host probe, the preflight of each example lock (and of
# two variants the host must refuse), and examples/torch-gpu/train.py trained natively twice with envlock's
# determinism settings and twice without. Writes a JSON report (--out, default gpu-report.json) and prints a summary.
#
# envlock runs from this checkout (PYTHONPATH=src), not installed: the Python needs only `packaging`, plus
# nvidia-ml-py for the probe and torch for the training. PYTHON picks the interpreter (default python3).
# Exit 0 once the report is written; with --strict, 1 unless every part ran and passed. --help lists the options.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m envlock.diagnostics.gpucheck --repo "$root" "$@"
