#!/usr/bin/env bash
# Starts what the docker tier needs on one machine, if it is not running yet:
# the Docker engine (dockerd) and a registry on 127.0.0.1:5000 (Debian's
# docker-registry with deployments/docker/registry.yml). Logs: /var/log/cs-*.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

wait_for() {  # wait_for <what> <seconds> <command...>
  local what=$1 seconds=$2; shift 2
  for _ in $(seq $((seconds * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "$what did not start within ${seconds}s" >&2
  return 1
}

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { echo "dockerd is missing: apt-get install docker.io" >&2; exit 1; }
  echo "starting dockerd (log /var/log/cs-dockerd.log)"
  setsid dockerd --host unix:///var/run/docker.sock >>/var/log/cs-dockerd.log 2>&1 < /dev/null &
  wait_for dockerd 60 docker info || { tail -20 /var/log/cs-dockerd.log >&2; exit 1; }
fi

if ! curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
  command -v docker-registry >/dev/null || { echo "docker-registry is missing: apt-get install docker-registry" >&2; exit 1; }
  mkdir -p /var/lib/docker-registry
  echo "starting docker-registry on 127.0.0.1:5000 (log /var/log/cs-registry.log)"
  setsid docker-registry serve "$here/registry.yml" >>/var/log/cs-registry.log 2>&1 < /dev/null &
  wait_for docker-registry 30 curl -fsS http://127.0.0.1:5000/v2/ || { tail -20 /var/log/cs-registry.log >&2; exit 1; }
fi
echo "docker engine and registry 127.0.0.1:5000 are up"
