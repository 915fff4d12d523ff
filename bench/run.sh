#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md. Runs on loopback only; every load is bounded in time.
# Usage: bench/run.sh            (needs wrk and nginx: apt-get install -y wrk nginx-light)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey-target}"
# BENCH_BIN=path measures that binary instead of building one.
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release -q -p latchkey; fi
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/latchkey}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# wrk's "Requests/sec" line
rps() { awk '/Requests\/sec/ {print $2}'; }

echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo || true
echo "== binary size"; stat -c '%s bytes' "$BIN"; ls -lh "$BIN" | awk '{print $5}'
echo "== start to ready, idle RSS (5 fresh data dirs)"; python3 bench/measure.py "$BIN" 5

HTTP=$(port)
export LATCHKEY_DATA_DIR="$WORK/data" LATCHKEY_LISTEN__HTTP="127.0.0.1:$HTTP" \
  LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL=warn
echo "bench-password" | "$BIN" user create bench --password-stdin >/dev/null
"$BIN" serve 2>"$WORK/serve.log" &
until curl -sf "http://127.0.0.1:$HTTP/-/health/ready/" >/dev/null; do sleep 0.05; done
EXEC="http://127.0.0.1:$HTTP/api/v1/flows/executor/default-authentication-flow/"
curl -s -c "$WORK/jar" -b "$WORK/jar" "$EXEC" >/dev/null
curl -s -c "$WORK/jar" -b "$WORK/jar" -H 'content-type: application/json' -d '{"uid_field":"bench","password":"bench-password"}' "$EXEC" >/dev/null
SESSION=$(awk '$6=="latchkey_session" {print $7}' "$WORK/jar")
[ -n "$SESSION" ] || { echo "login failed"; exit 1; }
curl -sf -o /dev/null -b "latchkey_session=$SESSION" "http://127.0.0.1:$HTTP/if/user/"

NGINX=$(port)
cat > "$WORK/nginx.conf" <<NGX
worker_processes 2; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$NGINX; location / { return 200 "ok"; } } }
NGX
nginx -c "$WORK/nginx.conf"

echo "== page behind a valid session cookie: wrk -t2 -c64 -d10s, 3 runs each, median req/s"
for i in 1 2 3; do wrk -t2 -c64 -d10s -H "Cookie: latchkey_session=$SESSION" "http://127.0.0.1:$HTTP/if/user/" | rps; done > "$WORK/lk"
for i in 1 2 3; do wrk -t2 -c64 -d10s "http://127.0.0.1:$NGINX/" | rps; done > "$WORK/ngx"
echo "latchkey /if/user/: $(median < "$WORK/lk") req/s (runs: $(tr '\n' ' ' < "$WORK/lk"))"
echo "nginx return 200:   $(median < "$WORK/ngx") req/s (runs: $(tr '\n' ' ' < "$WORK/ngx"))"

echo "== session-check latency: open-loop probe (bench/probe.py, 200 req/s for 10 s), idle vs during a login storm (wrk -t1 -c16 on the password step)"
python3 bench/probe.py "http://127.0.0.1:$HTTP/if/user/" "latchkey_session=$SESSION" 200 10 > "$WORK/idle"
wrk -t1 -c16 -d14s -s bench/login.lua "$EXEC" > "$WORK/storm" &
STORM=$!
sleep 2
python3 bench/probe.py "http://127.0.0.1:$HTTP/if/user/" "latchkey_session=$SESSION" 200 10 > "$WORK/during"
wait $STORM
echo "idle:   $(cat "$WORK/idle")"
echo "storm:  $(cat "$WORK/during")"
echo "logins/s completed during the storm: $(rps < "$WORK/storm")"
