#!/usr/bin/env bash
# Start the Docker engine if it is not running (idempotent): envlock build and its tests talk to it.
set -euo pipefail
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
state=${ENVLOCK_SERVICES_DIR:-/var/lib/envlock-services}

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl start docker
  else
    "${sudo_cmd[@]}" mkdir -p "$state"
    "${sudo_cmd[@]}" sh -c "nohup dockerd >'$state/dockerd.log' 2>&1 </dev/null &"
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "services: the Docker engine did not start; see $state/dockerd.log" >&2
    exit 1
  fi
fi
echo "services: Docker engine $(docker version --format '{{.Server.Version}}') is running"
