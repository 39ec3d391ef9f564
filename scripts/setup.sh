#!/usr/bin/env bash
# Set up everything envlock needs on a fresh Debian bookworm machine (idempotent): Debian packages (Python,
# the Docker engine, mmdebstrap, a registry, Slurm), a virtual environment in .venv with envlock and its tools, and
# the services started (dockerd; a two-node Slurm cluster on this host).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# A headless browser: the test that `envlock report --html` renders (chromium --headless --dump-dom).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# A Slurm cluster on this machine (envlock submit --slurm and its tests): controller, node daemons, client, munge.
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: envlock needs Python >= 3.11 (found $(python3 --version 2>&1)); Debian bookworm ships 3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
echo "setup: installing envlock and its tools into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# Byte-compile envlock once: with PYTHONDONTWRITEBYTECODE set (as on some machines) every start would compile it.
.venv/bin/python -m compileall -q src >/dev/null
bash scripts/services.sh
echo "setup: done ($(.venv/bin/envlock --version))"
