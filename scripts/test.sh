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
# The unit tests again under Debian's /usr/bin/python3 (bookworm: 3.11.2, where tarfile has no `filter=`).
if [ ! -x /usr/bin/python3 ]; then
  echo "test: no /usr/bin/python3 (not a Debian machine): skipping the unit tests under Debian's Python"
elif [ ! -x .venv-debian/bin/python ]; then
  echo "test: no .venv-debian yet; run: bash scripts/setup.sh" >&2
  exit 1
else
  echo "test: unit tests under Debian's $(/usr/bin/python3 --version 2>&1) (.venv-debian)"
  .venv-debian/bin/python -m pytest tests/unit -q -p no:cacheprovider
fi
