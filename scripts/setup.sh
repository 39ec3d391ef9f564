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
# linux/arm64 images on an amd64 machine: the arm64 base is built by mmdebstrap under qemu's binfmt handler.
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
command -v arch-test >/dev/null 2>&1 || missing+=(arch-test)
# Runtimes without Docker (envlock run/submit --runtime podman|charliecloud) and `envlock export enroot`.
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v ch-run >/dev/null 2>&1 || missing+=(charliecloud-runtime)
command -v mksquashfs >/dev/null 2>&1 || missing+=(squashfs-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# qemu's handlers are registered through binfmt_misc, which a container or a fresh machine may not have mounted.
if [ "$(uname -m)" != aarch64 ]; then
  if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    "${sudo_cmd[@]}" mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || echo "setup: cannot mount binfmt_misc"
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || "${sudo_cmd[@]}" update-binfmts --enable qemu-aarch64 || true
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
# Debian's own Python (bookworm: 3.11.2, older than the 3.11.4 that added tar filters) runs the unit tests too
# (scripts/test.sh), in .venv-debian with only what they need: envlock[test].
if [ -x /usr/bin/python3 ]; then
  if [ ! -x .venv-debian/bin/python ]; then
    echo "setup: creating .venv-debian ($(/usr/bin/python3 --version 2>&1), Debian's)"
    /usr/bin/python3 -m venv .venv-debian
  fi
  echo "setup: installing envlock and its unit-test tools into .venv-debian"
  .venv-debian/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
fi
bash scripts/services.sh
echo "setup: done ($(.venv/bin/envlock --version))"
