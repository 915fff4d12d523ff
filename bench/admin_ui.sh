#!/usr/bin/env bash
# Admin list pages with 10,000 users (issue 4 target: ≤ 50 ms server time, page ≤ 100 KB).
# Usage: bench/admin_ui.sh   (SQLite; LATCHKEY_DATABASE__URL=postgres://… for PostgreSQL)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey-target}"
# BENCH_BIN=path/to/latchkey measures another build (e.g. the dev profile) without building.
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release -q -p latchkey; fi
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/latchkey}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(port)
export LATCHKEY_DATA_DIR="$WORK/data" LATCHKEY_LISTEN__HTTP="127.0.0.1:$HTTP" \
  LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" \
  LATCHKEY_LISTEN__LDAP="127.0.0.1:$(port)" LATCHKEY_LISTEN__LDAPS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL=warn

# 10,000 users (no passwords: creating them is about the directory, not argon2) and one admin.
python3 - "$WORK/users.yaml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("users:\n")
    for i in range(10000):
        f.write(f"  - username: user-{i:05d}\n    name: Person {i:05d}\n    email: user-{i:05d}@example.test\n")
PY
time "$BIN" blueprint apply "$WORK/users.yaml" | tail -1
echo "bench-admin-password" | "$BIN" user create bench-admin --group admins --password-stdin >/dev/null
"$BIN" serve 2>"$WORK/serve.log" &
until curl -sf "http://127.0.0.1:$HTTP/-/health/ready/" >/dev/null; do sleep 0.05; done
BASE="http://127.0.0.1:$HTTP"
EXEC="$BASE/api/v1/flows/executor/default-authentication-flow/"
curl -sf -c "$WORK/jar" -b "$WORK/jar" "$EXEC" >/dev/null
curl -sf -c "$WORK/jar" -b "$WORK/jar" -H 'Content-Type: application/json' \
  -d '{"uid_field":"bench-admin","password":"bench-admin-password"}' "$EXEC" >/dev/null
SESSION=$(awk '$6 == "latchkey_session" {print $7}' "$WORK/jar")
echo "== admin pages, 10,001 users, 200 sequential requests each over one keep-alive connection"
python3 bench/admin_ui.py "$BASE" "$SESSION" 200 \
  /if/admin/users/ "/if/admin/users/?page=150" "/if/admin/users/?search=user-0424" \
  "/if/admin/users/?search=person&ordering=-created_at&page=20" "/if/admin/users/?page_size=200" \
  /if/admin/ /if/admin/events/ /if/user/
