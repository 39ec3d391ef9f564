#!/usr/bin/env bash
# Set up envlock on a fresh Debian bookworm machine (idempotent), in three stages, each including the ones before:
#   --core   what lock → build → run → reproduce needs: Python, git, the Docker engine, mmdebstrap; .venv with
#            envlock; dockerd started (scripts/quickstart.sh's first part);
#   --slurm  also a two-node Slurm cluster on this host (munge, slurmctld, slurmd) and envlock's MLflow client;
#   (none)   everything, the tests' needs included: a registry, chromium, qemu for linux/arm64, Podman,
#            Charliecloud, squashfs-tools, the dev tools in .venv and Debian's own Python in .venv-debian.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=all
case "${1:-}" in
  --core) stage=core ;;
  --slurm) stage=slurm ;;
  "") ;;
  *)
    echo "usage: bash scripts/setup.sh [--core | --slurm]" >&2
    exit 2
    ;;
esac

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ "$stage" != core ]; then
  # A Slurm cluster on this machine (envlock submit --slurm and its tests): controller, node daemons, client, munge.
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
  command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
  command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
fi
if [ "$stage" = all ]; then
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  # A headless browser: the test that `envlock report --html` renders (chromium --headless --dump-dom).
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # linux/arm64 images on an amd64 machine: the arm64 base is built by mmdebstrap under qemu's binfmt handler.
  command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
  command -v arch-test >/dev/null 2>&1 || missing+=(arch-test)
  # Runtimes without Docker (envlock run/submit --runtime podman|charliecloud) and `envlock export enroot`.
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v ch-run >/dev/null 2>&1 || missing+=(charliecloud-runtime)
  command -v mksquashfs >/dev/null 2>&1 || missing+=(squashfs-tools)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# qemu's handlers are registered through binfmt_misc, which a container or a fresh machine may not have mounted.
if [ "$stage" = all ] && [ "$(uname -m)" != aarch64 ]; then
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
# Each stage installs its extra only when a module it brings is missing: a set-up .venv costs no pip run.
pip_install() { # module-that-shows-it-is-there, requirement
  if ! .venv/bin/python -c "import $1" >/dev/null 2>&1; then
    echo "setup: installing $2 into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$2"
  fi
}
case "$stage" in
  core) pip_install envlock . ;;
  slurm) pip_install mlflow .[mlflow] ;;
  # The dev extra (mlflow's server, mypy, ruff, pytest, ...) and pip itself upgraded, as before: everything.
  all)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    echo "setup: installing envlock and its tools into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    ;;
esac
# Byte-compile envlock once: with PYTHONDONTWRITEBYTECODE set (as on some machines) every start would compile it.
.venv/bin/python -m compileall -q src >/dev/null
# Debian's own Python (bookworm: 3.11.2, older than the 3.11.4 that added tar filters) runs the unit tests too
# (scripts/test.sh), in .venv-debian with only what they need: envlock[test].
if [ "$stage" = all ] && [ -x /usr/bin/python3 ]; then
  if [ ! -x .venv-debian/bin/python ]; then
    echo "setup: creating .venv-debian ($(/usr/bin/python3 --version 2>&1), Debian's)"
    /usr/bin/python3 -m venv .venv-debian
  fi
  echo "setup: installing envlock and its unit-test tools into .venv-debian"
  .venv-debian/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
fi
if [ "$stage" = core ]; then
  ENVLOCK_SERVICES=docker bash scripts/services.sh
else
  bash scripts/services.sh
fi
echo "setup: done, stage $stage ($(.venv/bin/envlock --version))"
