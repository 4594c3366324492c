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
# one API key written to KEY_FILE. Stays in the foreground until the server exits, because bench.py stops
# the target by its process group and measures CPU/RSS over this process tree.
# TOKENHUB_LOG_LEVEL (default info) and TOKENHUB_RATE_LIMIT_* from the caller's environment are honoured;
# TOKENHUB_WRAPPER, a command the server runs under (e.g. valgrind, scripts/instructions_per_request.py).
set -euo pipefail

port=${1:-${TOKENHUB_PORT:-18090}}
upstream=${2:-${UPSTREAM_URL:-http://127.0.0.1:18081}}
key_file=${3:-/tmp/tokenhub-bench.key}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base=http://127.0.0.1:$port

# bench.py reads KEY_FILE as soon as it is non-empty: never leave a key from an earlier start behind.
rm -f "$key_file"
data_dir=$(mktemp -d /tmp/tokenhub-bench-data.XXXXXX)
admin_token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
srv=""

cleanup() {
  if [[ -n $srv ]] && kill -0 "$srv" 2>/dev/null; then kill -TERM "$srv" 2>/dev/null || true; wait "$srv" || true; fi
  rm -rf "$data_dir" "$key_file"
}
trap cleanup EXIT
# bench.py signals the whole process group, but forward anyway so a plain `kill <this pid>` also works.
trap '[[ -n $srv ]] && kill -TERM "$srv" 2>/dev/null || true' TERM INT

# bench.py's own TOKENHUB_* variables are not TokenHub settings (the server would warn about each one).
wrapper=${TOKENHUB_WRAPPER:-}
unset TOKENHUB_PORT TOKENHUB_CMD TOKENHUB_KEY TOKENHUB_PATH TOKENHUB_BODY TOKENHUB_MODEL TOKENHUB_HEADER TOKENHUB_WRAPPER
export TOKENHUB_DATA_DIR=$data_dir TOKENHUB_LISTEN_ADDR=127.0.0.1:$port TOKENHUB_ADMIN_TOKEN=$admin_token
# The per-IP limiter (default 60 rps) would reject most of the load: all requests come from 127.0.0.1.
export TOKENHUB_RATE_LIMIT_RPS=${TOKENHUB_RATE_LIMIT_RPS:-1000000}
export TOKENHUB_RATE_LIMIT_BURST=${TOKENHUB_RATE_LIMIT_BURST:-1000000}
export TOKENHUB_SHUTDOWN_DRAIN_SECS=${TOKENHUB_SHUTDOWN_DRAIN_SECS:-5}  # stop well within bench.py's 10 s

cd "$root"
$wrapper .venv/bin/python -m pipeline serve &
srv=$!

# /healthz answers 503 until a model is routable; any HTTP status means the server is listening.
for _ in $(seq 3000); do  # up to 5 min: under valgrind start-up takes tens of seconds
  kill -0 "$srv" 2>/dev/null || { echo "bench-tokenhub: server exited during start-up" >&2; exit 1; }
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/healthz" || true) != 000 ]] && break
  sleep 0.1
done

admin() {  # admin PATH JSON -> response body; fails the script on a non-2xx status
  curl -sS --fail-with-body -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d "$2" "$base/admin/v1/$1"
}
admin providers "{\"id\":\"fake\",\"base_url\":\"$upstream\",\"api_key\":\"sk-x\"}" >/dev/null
admin models '{"id":"fake-gpt","provider_id":"fake","weight":5,"input_per_1k":0.001,"output_per_1k":0.002}' >/dev/null
key=$(admin apikeys '{"name":"bench"}' | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["key"])')
# Write then rename, so bench.py never reads a half-written key.
(umask 077 && printf '%s\n' "$key" >"$key_file.tmp") && mv "$key_file.tmp" "$key_file"
echo "bench-tokenhub: ready on $base (pid $srv, data $data_dir, key in $key_file)" >&2

# `wait` returns early when a trapped signal arrives; wait again so the server can finish its drain.
rc=0
wait "$srv" || rc=$?
if kill -0 "$srv" 2>/dev/null; then rc=0; wait "$srv" || rc=$?; fi
srv=""
exit "$rc"
