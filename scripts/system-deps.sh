#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's chromium (the admin UI's browser tests drive
# it headless; never a browser download), promtool (from the prometheus package: checks and unit-tests
# the alert rules) and wrk (scripts/bench_scale.py's load generator, tests/test_bench_scale.py). Installs only what is missing; needs root or passwordless sudo on a fresh machine.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
command -v wrk >/dev/null || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
