#!/usr/bin/env bash
# Runs the JS reference peer's self-test (JS writer -> JS reader over loopback TCP).
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules/hypercore ] || { echo "js/node_modules missing: run 'make js' (npm ci in js/)" >&2; exit 1; }
exec node selftest.js "$@"
