#!/usr/bin/env bash
# Run envlock's checks and whole test suite (lint, types, unit and integration tests). Needs scripts/setup.sh
# (or scripts/quickstart.sh) to have run once; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/pytest ]; then
  echo "test: no .venv yet; run: bash scripts/setup.sh" >&2
  exit 1
fi
bash scripts/services.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/pytest "$@"
