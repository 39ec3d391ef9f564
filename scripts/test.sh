#!/usr/bin/env bash
# Run envlock's checks and test suite: ruff, mypy, the import contract, pytest (unit and integration), and the unit
# tests again under Debian's Python. Needs scripts/setup.sh to have run once; extra arguments go to pytest.
#   bash scripts/test.sh          the full suite (CI runs this)
#   bash scripts/test.sh --fast   the fast tier: the same checks, pytest -m "not slow" (no engine, cluster,
#                                 emulation or browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
tier=()
fast=0
if [ "${1:-}" = --fast ]; then
  tier=(-m "not slow")
  fast=1
  shift
else
  # Two workers (pytest-xdist): the engine tests in groups, one after the other within each, the groups beside
  # each other (see tests/conftest.py's scheduler); the other tests wherever a worker is free. Most of the suite
  # waits on the engine, the registry, Slurm or the network, with a core idle: two streams fill it.
  tier=(-n 2)
fi
if [ ! -x .venv/bin/pytest ]; then
  echo "test: no .venv yet; run: bash scripts/setup.sh" >&2
  exit 1
fi
if [ "$fast" = 0 ] && ! .venv/bin/python -c 'import xdist' >/dev/null 2>&1; then
  echo "test: pytest-xdist is missing from .venv; run: bash scripts/setup.sh" >&2
  exit 1
fi
debian=1
if [ ! -x /usr/bin/python3 ]; then
  echo "test: no /usr/bin/python3 (not a Debian machine): skipping the unit tests under Debian's Python"
  debian=0
elif [ ! -x .venv-debian/bin/python ]; then
  echo "test: no .venv-debian yet; run: bash scripts/setup.sh" >&2
  exit 1
fi
if [ "$fast" = 0 ]; then bash scripts/services.sh; fi
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples

# mypy, the import contract and the unit tests under Debian's Python need the CPU while the integration tests mostly
# wait on the engine, the network and mmdebstrap: they run beside pytest, their output shown after it.
logs=$(mktemp -d "${TMPDIR:-/tmp}/envlock-test.XXXXXX")
trap 'rm -rf "$logs"' EXIT
beside() { # name, command...
  local name=$1
  shift
  ("$@" >"$logs/$name.log" 2>&1 && echo 0 >"$logs/$name.rc" || echo $? >"$logs/$name.rc") &
}
beside mypy .venv/bin/mypy
beside lint-imports .venv/bin/lint-imports --no-cache
if [ "$debian" = 1 ]; then
  # The unit tests again under Debian's /usr/bin/python3 (bookworm: 3.11.2, where tarfile has no `filter=`).
  beside "unit tests under Debian's $(/usr/bin/python3 --version 2>&1) (.venv-debian)" \
    .venv-debian/bin/python -m pytest tests/unit -q -p no:cacheprovider
fi
status=0
.venv/bin/pytest ${tier[@]+"${tier[@]}"} "$@" || status=$?
wait
for rc in "$logs"/*.rc; do
  name=$(basename "$rc" .rc)
  echo
  echo "test: $name:"
  cat "$logs/$name.log"
  if [ "$(cat "$rc")" != 0 ]; then
    echo "test: $name failed (exit $(cat "$rc"))" >&2
    status=1
  fi
done
echo "test: $([ "$status" = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - started)) s"
exit "$status"
