#!/usr/bin/env bash
# REST API list latency with 10,000 users (issue 4 target: admin lists <= 50 ms server time).
# Usage: bench/api_users.sh   (needs wrk; BENCH_BIN=path uses that binary instead of a release build;
#        LATCHKEY_DATABASE__URL=postgres://… measures PostgreSQL instead of SQLite)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BENCH_BIN:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey-target}"
  cargo build --release -q -p latchkey
  BENCH_BIN="$CARGO_TARGET_DIR/release/latchkey"
fi
BIN="$BENCH_BIN"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(port)
export LATCHKEY_DATA_DIR="$WORK/data" LATCHKEY_LISTEN__HTTP="127.0.0.1:$HTTP" \
  LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" \
  LATCHKEY_LISTEN__LDAP="127.0.0.1:$(port)" LATCHKEY_LISTEN__LDAPS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL=warn

echo "== seeding 10,000 users (blueprint apply)"
python3 - "$WORK/users.yaml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("groups:\n  - name: staff\nusers:\n")
    for i in range(10000):
        f.write(f"  - username: user-{i:05d}\n    name: User {i}\n    email: user{i}@example.test\n")
        if i % 10 == 0:
            f.write("    groups: [staff]\n")
PY
time "$BIN" blueprint apply "$WORK/users.yaml" >/dev/null
echo "bench-password" | "$BIN" user create bench --password-stdin --group admins >/dev/null
TOKEN=$("$BIN" token create --user bench)
"$BIN" serve 2>"$WORK/serve.log" &
until curl -sf "http://127.0.0.1:$HTTP/-/health/ready/" >/dev/null; do sleep 0.05; done
BASE="http://127.0.0.1:$HTTP"
curl -sf -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/users/?page_size=1" | python3 -c 'import json,sys; print("users:", json.load(sys.stdin)["pagination"]["count"])'

# wrk's median latency (the "50%" line of --latency), one connection: server time per request.
median_latency() { wrk -t1 -c1 -d10s --latency -H "Authorization: Bearer $TOKEN" "$1" | awk '$1=="50%" {print $2}'; }
echo "== median latency, wrk -t1 -c1 -d10s --latency (3 runs each)"
for url in \
  "$BASE/-/health/live/" \
  "$BASE/api/v1/users/?page_size=20" \
  "$BASE/api/v1/users/?page_size=100" \
  "$BASE/api/v1/users/?page=400&page_size=20&ordering=-email" \
  "$BASE/api/v1/users/?search=user-0042&page_size=20" \
  "$BASE/api/v1/users/?search=example.test&ordering=-last_login&page_size=100" \
  "$BASE/api/v1/groups/" \
  "$BASE/api/v1/events/?page_size=100"; do
  runs=$(for i in 1 2 3; do median_latency "$url"; done | tr '\n' ' ')
  echo "$url  $runs"
done
