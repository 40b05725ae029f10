#!/usr/bin/env bash
# The main job on the embedded tier, from a fresh clone: install, start the local
# stack, publish the ParamTools sample app from a git repository, run one
# simulation through its deployment, and show where the outputs are.
set -euo pipefail
cd "$(dirname "$0")"

export CS_HOME="${CS_HOME:-$PWD/.cs-home}"
# As root, model code runs as uid 10001 (the sandbox's own user), which must reach CS_HOME's
# model environments: a clone under a private home (/root) gets a CS_HOME it can reach.
if [ "$(id -u)" = 0 ] && ! setpriv --reuid 10001 --regid 10001 --clear-groups test -x "$(dirname "$CS_HOME")" 2>/dev/null; then
  export CS_HOME="/var/lib/prefect-cs/$(basename "$PWD")"
  echo "CS_HOME=$CS_HOME (the model user cannot reach $PWD)"
fi
# The stack keeps its Prefect database in $CS_HOME/prefect whatever PREFECT_HOME says, and makes
# CS_HOME itself (0711, private folders 0700): nothing here creates folders in it before it does.
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:4200/api}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Publish clones only remote repositories (https, ssh, git) unless the operator lists local folders:
# the sample app's repository is made below in this one. Set before `stack start`, whose workers
# (they run publish) inherit it.
export CS_LOCAL_REPO_PREFIXES="${CS_LOCAL_REPO_PREFIXES:-$CS_HOME/sample-repos}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "install (virtualenv .venv; bubblewrap, slirp4netns and libseccomp: the model sandbox)"
# The sandbox (bubblewrap), the network its install steps get without the host's (slirp4netns,
# fenced with iproute2's ip), and its seccomp filter (libseccomp, through pyseccomp).
sandbox_packages=()
for cmd in bwrap:bubblewrap slirp4netns:slirp4netns ip:iproute2 nsenter:util-linux; do
  command -v "${cmd%%:*}" >/dev/null || sandbox_packages+=("${cmd##*:}")
done
ldconfig -p 2>/dev/null | grep -q libseccomp.so.2 || sandbox_packages+=(libseccomp2)
if [ ${#sandbox_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq "${sandbox_packages[@]}" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq "${sandbox_packages[@]}" >/dev/null; }
  else
    echo "model code runs in a sandbox that needs ${sandbox_packages[*]}: install them (sudo apt-get install ${sandbox_packages[*]}) and re-run" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
cs=.venv/bin/prefect-cs

step "start the local stack (Prefect server, process worker, inputs worker, web app stand-in)"
$cs stack start
# The server asks for a login (made by the first `stack start`, mode 0600); `prefect …` commands
# below send it from the environment. `$(<file)` is bash's own read: no process gets it on argv.
export PREFECT_API_AUTH_STRING="${PREFECT_API_AUTH_STRING:-$(<"$CS_HOME/prefect-auth")}"

step "make a git repository of the sample app, tag v1"
repo="$CS_HOME/sample-repos/paramtools-app"
rm -rf "$repo" && install -d -m 700 "$(dirname "$repo")" && cp -r examples/paramtools-app "$repo"  # private, like all of CS_HOME
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=quickstart -c user.email=quickstart@localhost commit -q -m "sample app"
git -C "$repo" tag -f v1 >/dev/null

step "register and publish examples/ParamTools-Demo@v1 (the publish deployment, on the process worker)"
$cs models register examples/config/examples/ParamTools-Demo.yaml --repo-url "$repo" --repo-tag v1
.venv/bin/prefect deployment run publish/publish -p owner=examples -p title=ParamTools-Demo -p tag=v1 --watch \
  --watch-interval 2 --watch-timeout 900
$cs models list

step "run one simulation through prefect deployment run (as the web app does)"
task_id=$(.venv/bin/python -c 'import uuid; print(uuid.uuid4())')
.venv/bin/prefect deployment run simulate/examples-paramtools-demo \
  -p owner=examples -p title=ParamTools-Demo -p task_id="$task_id" \
  --params "{\"adjustment\": $(cat examples/paramtools-app/adjustment.json), \"meta_param_dict\": {}}" \
  --watch --watch-interval 1 --watch-timeout 300

step "results"
echo "outputs:        $CS_HOME/outputs/${task_id}_renderable.zip"
echo "                $CS_HOME/outputs/${task_id}_downloadable.zip"
unzip -l "$CS_HOME/outputs/${task_id}_renderable.zip" | sed 's/^/                /'
echo "web app got:    $(grep -c "$task_id" "$CS_HOME/stack/webapp-requests.jsonl") PUT /outputs/api/ for task $task_id (log: $CS_HOME/stack/webapp-requests.jsonl)"
echo "Prefect UI:     ${PREFECT_API_URL%/api} (password: the whole line in $CS_HOME/prefect-auth, admin:…)"
echo "prefect CLI:    export PREFECT_API_AUTH_STRING=\"\$(<$CS_HOME/prefect-auth)\"  (prefect-cs reads the file itself)"
echo "stop the stack: CS_HOME=$CS_HOME PREFECT_API_URL=$PREFECT_API_URL $cs stack stop"
