#!/usr/bin/env bash
# Set up envlock, then do its main job on the bundled examples: lock, check, and show what is locked.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
envlock=.venv/bin/envlock

echo
echo "== envlock lock: examples/digits (CPU training, linux/amd64 + linux/arm64)"
"$envlock" lock -C examples/digits
"$envlock" lock --check -C examples/digits
"$envlock" show -C examples/digits

echo
echo "== envlock lock: examples/torch-gpu (torch 2.5.1 with its CUDA 12.4 wheels)"
"$envlock" lock -C examples/torch-gpu
"$envlock" show -C examples/torch-gpu --platform linux/amd64 | head -n 8

echo
echo "Done. Lock your own project with: .venv/bin/envlock lock -C /path/to/project"
