#!/usr/bin/env bash
# Start TokenHub for the overhead benchmark (the shared benchmark harness bench.py, target "tokenhub").
#
#   bench-tokenhub.sh [PORT] [UPSTREAM_URL] [KEY_FILE]
#
# PORT / UPSTREAM_URL default to $TOKENHUB_PORT / $UPSTREAM_URL (bench.py sets both); KEY_FILE defaults to
# /tmp/tokenhub-bench.key. Usage with bench.py:
#   TOKENHUB_CMD='bash path/to/tokenhub/scripts/bench-tokenhub.sh {port} {upstream} /tmp/tokenhub-bench.key' \
#   TOKENHUB_KEY=@/tmp/tokenhub-bench.key TOKENHUB_PATH=/v1/chat TOKENHUB_BODY=body.json bench.py ...
#
# Fresh data dir per start, then through the admin API: provider "fake" -> UPSTREAM_URL, model "fake-gpt",
# one API key written to KEY_FILE. The server replaces this shell (exec), so the process tree bench.py
# measures (CPU, RSS) and stops (its process group) is the server alone, as in the image, where `tokenhub
# serve` is PID 1. A detached helper, outside that tree, configures it once it listens, then removes the data
# dir and key file when it exits.
# TOKENHUB_LOG_LEVEL (default info) and TOKENHUB_RATE_LIMIT_* from the caller's environment are honoured;
# TOKENHUB_WRAPPER, a command the server runs under (e.g. valgrind, scripts/instructions_per_request.py).
# BENCH_PYTHON, the interpreter that runs the server (default .venv/bin/python; a relative path is taken from the
# repository's root): `make runtime-venv` builds one with the runtime dependencies alone, as the image installs
# them (the test extras bring packages the server then imports, e.g. rich, which structlog imports whenever it is
# installed: +4 MiB).
set -euo pipefail

port=${1:-${TOKENHUB_PORT:-18090}}
upstream=${2:-${UPSTREAM_URL:-http://127.0.0.1:18081}}
key_file=${3:-/tmp/tokenhub-bench.key}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${BENCH_PYTHON:-.venv/bin/python}
[[ $python == /* ]] || python=$root/$python  # a relative path is the repository's
base=http://127.0.0.1:$port

# bench.py reads KEY_FILE as soon as it is non-empty: never leave a key from an earlier start behind.
rm -f "$key_file"
data_dir=$(mktemp -d /tmp/tokenhub-bench-data.XXXXXX)
admin_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

# bench.py's own TOKENHUB_* variables are not TokenHub settings (the server would warn about each one).
wrapper=${TOKENHUB_WRAPPER:-}
unset TOKENHUB_PORT TOKENHUB_CMD TOKENHUB_KEY TOKENHUB_PATH TOKENHUB_BODY TOKENHUB_MODEL TOKENHUB_HEADER TOKENHUB_WRAPPER
export TOKENHUB_DATA_DIR=$data_dir TOKENHUB_LISTEN_ADDR=127.0.0.1:$port TOKENHUB_ADMIN_TOKEN=$admin_token
# The per-IP limiter (default 60 rps) would reject most of the load: all requests come from 127.0.0.1.
export TOKENHUB_RATE_LIMIT_RPS=${TOKENHUB_RATE_LIMIT_RPS:-1000000}
export TOKENHUB_RATE_LIMIT_BURST=${TOKENHUB_RATE_LIMIT_BURST:-1000000}
export TOKENHUB_SHUTDOWN_DRAIN_SECS=${TOKENHUB_SHUTDOWN_DRAIN_SECS:-5}  # stop well within bench.py's 10 s

srv=$$  # the server's pid once this shell execs it

admin() {  # admin PATH JSON -> response body; fails on a non-2xx status
  curl -sS --fail-with-body -H "Authorization: Bearer $TOKENHUB_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "$2" "$base/admin/v1/$1"
}

configure() {
  # /healthz answers 503 until a model is routable; any HTTP status means the server is listening.
  for _ in $(seq 3000); do  # up to 5 min: under valgrind start-up takes tens of seconds
    kill -0 "$srv" 2>/dev/null || { echo "bench-tokenhub: server exited during start-up" >&2; return 1; }
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/healthz" || true) != 000 ]] && break
    sleep 0.1
  done
  # Each step checked: `set -e` does not apply inside a function called as `configure || ...`.
  admin providers "{\"id\":\"fake\",\"base_url\":\"$upstream\",\"api_key\":\"sk-x\"}" >/dev/null || return 1
  admin models '{"id":"fake-gpt","provider_id":"fake","weight":5,"input_per_1k":0.001,"output_per_1k":0.002}' \
    >/dev/null || return 1
  key=$(admin apikeys '{"name":"bench"}' | "$python" -c 'import json, sys; print(json.load(sys.stdin)["key"])') \
    || return 1
  # Write then rename, so bench.py never reads a half-written key.
  (umask 077 && printf '%s\n' "$key" >"$key_file.tmp") && mv "$key_file.tmp" "$key_file"
  echo "bench-tokenhub: ready on $base (pid $srv, data $data_dir, key in $key_file)" >&2
}

helper() {
  # A failed set-up stops the server: the caller would otherwise wait for a key that never comes.
  configure || kill -TERM "$srv" 2>/dev/null || true
  while kill -0 "$srv" 2>/dev/null; do sleep 0.5; done
  rm -rf "$data_dir" "$key_file" "$key_file.tmp"
}

# Double fork and a session of its own: the helper is no child of the server and not in its process group.
# The admin token reaches it through the environment, not its command line.
(setsid bash -c "$(declare -f admin configure helper); $(declare -p srv base upstream key_file data_dir python); helper" </dev/null &)

cd "$root"
exec $wrapper "$python" -m pipeline serve
