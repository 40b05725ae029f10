#!/usr/bin/env bash
# Starts what the docker tier needs on one machine, if it is not running yet:
# the Docker engine (dockerd) and a registry on 127.0.0.1:5000 (Debian's
# docker-registry with infra/docker/registry.yml) that refuses every push
# and pull without its login (htpasswd, bcrypt). Logs: /var/log/cs-*.log.
#
# The login (user cs-publisher, 256 random bits) is made here once, before any
# Prefect server exists, and kept where only root can read it:
#   /etc/prefect-cs/registry/              0700
#   /etc/prefect-cs/registry/credentials   0600  {"registry_url", "username", "password"}
#   /etc/prefect-cs/registry/htpasswd      0600  its bcrypt hash, what the registry checks
# `prefect-cs docker up` copies it into the DockerRegistryCredentials block
# `cs-registry`: publish pushes with that block, Docker workers pull with it by
# reference (CS_REGISTRY_BLOCK=cs-registry). The password is never on a command
# line (bash builtins and stdin only) nor in this script's output.
#
# Idempotent: a registry that already asks for this login is left running. A
# docker-registry on the port that answers without a login (started by this
# script before it had auth) or refuses this login is stopped, by its pid, and
# started again with auth. To rotate the password: delete the credentials file,
# run this again, then `prefect-cs docker up` (or `docker registry-block`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
addr=127.0.0.1:5000
auth_dir=/etc/prefect-cs/registry
credentials=$auth_dir/credentials
user=cs-publisher
pidfile=/run/cs-registry.pid

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

# ---- the registry's login --------------------------------------------------------------

password() {  # the password from the credentials file (hex, so a plain sed reads it)
  sed -n 's/.*"password": *"\([0-9a-f]*\)".*/\1/p' "$credentials"
}

make_credentials() {  # once: a random password, 0600, written with builtins only
  [ -s "$credentials" ] && [ -n "$(password)" ] && return 0
  command -v htpasswd >/dev/null || { echo "htpasswd is missing: apt-get install apache2-utils" >&2; exit 1; }
  echo "making the registry login ($credentials, root only)"
  local secret
  secret=$(od -An -vtx1 -N32 /dev/urandom | tr -d ' \n')
  (
    umask 077
    printf '{"registry_url": "%s", "username": "%s", "password": "%s"}\n' \
      "$addr" "$user" "$secret" >"$credentials.tmp"
  )
  mv -f "$credentials.tmp" "$credentials"
  rm -f "$auth_dir/htpasswd"  # a new password needs a new hash
}

make_htpasswd() {  # the bcrypt hash the registry checks, from the credentials file
  [ -s "$auth_dir/htpasswd" ] && [ "$auth_dir/htpasswd" -nt "$credentials" ] && return 0
  command -v htpasswd >/dev/null || { echo "htpasswd is missing: apt-get install apache2-utils" >&2; exit 1; }
  # -i: the password on stdin, never argv. bcrypt's default cost is enough for 256 random bits.
  (umask 077; htpasswd -iBc "$auth_dir/htpasswd.tmp" "$user" >/dev/null 2>&1 <<<"$(password)")
  mv -f "$auth_dir/htpasswd.tmp" "$auth_dir/htpasswd"
}

mkdir -p "$auth_dir"
chmod 0700 "$auth_dir"
make_credentials
make_htpasswd
chmod 0600 "$credentials" "$auth_dir/htpasswd"

# ---- the registry ------------------------------------------------------------------------

anonymous_code() {  # what GET /v2/ answers without a login: 401 (auth), 200 (open), 000 (nothing)
  curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://$addr/v2/" 2>/dev/null || true
}

login_works() {  # the login, given to curl on stdin (-K -), never on its command line
  curl -fsS -o /dev/null --max-time 5 -K - "http://$addr/v2/" <<<"user = \"$user:$(password)\""
}

registry_pid() {  # the docker-registry process serving $addr: our pidfile, else the listener
  local pid
  for pid in $(cat "$pidfile" 2>/dev/null) \
    $(ss -Hltnp "sport = :${addr##*:}" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = docker-registry ]; then echo "$pid"; return 0; fi
  done
  return 1
}

stop_registry() {  # $1: why
  local pid
  pid=$(registry_pid) || {
    echo "something on $addr that is not docker-registry answers $(anonymous_code) to GET /v2/: stop it," \
      "the docker tier's registry needs that address" >&2
    exit 1
  }
  echo "restarting docker-registry (pid $pid) on $addr: $1"
  kill "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then echo "docker-registry (pid $pid) did not stop" >&2; exit 1; fi
  rm -f "$pidfile"
}

case "$(anonymous_code)" in
  401) login_works || stop_registry "it refuses the login in $credentials" ;;
  000) ;;
  *) stop_registry "it answers without a login" ;;
esac

if [ "$(anonymous_code)" = 000 ]; then
  command -v docker-registry >/dev/null || { echo "docker-registry is missing: apt-get install docker-registry" >&2; exit 1; }
  mkdir -p /var/lib/docker-registry
  echo "starting docker-registry on $addr with htpasswd auth (log /var/log/cs-registry.log)"
  setsid docker-registry serve "$here/registry.yml" >>/var/log/cs-registry.log 2>&1 < /dev/null &
  echo $! >"$pidfile"
  wait_for docker-registry 30 login_works || { tail -20 /var/log/cs-registry.log >&2; exit 1; }
fi
[ "$(anonymous_code)" = 401 ] || { echo "the registry on $addr answers without a login" >&2; exit 1; }
echo "docker engine and registry $addr are up (push and pull need the login in $credentials)"
