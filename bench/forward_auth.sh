#!/usr/bin/env bash
# Forward-auth benchmark for BENCHMARKS.md (issue 6 targets). Loopback only, bounded in time.
# A forward-auth check with a valid session cookie (GET /outpost.goauthentik.io/auth/nginx
# with X-Original-URL, straight at Latchkey; the provider has four access rules) and the same
# check with an app password (Authorization: Basic) vs nginx `return 200`, in the same run:
# wrk -t2 -c64 -d10s, 3 runs each, medians, ratio, p99 (--latency); then RSS before and
# after each of two 60 s runs of the check (the first warms caches and the allocator up).
# Usage: bench/forward_auth.sh   (needs wrk and nginx: apt-get install -y wrk nginx-light)
#   PIN=1 bench/forward_auth.sh   the servers (Latchkey, nginx with one worker) on CPU 1 and
#                                 wrk (-t1) on CPU 0, so client and server never preempt each
#                                 other: the latency then is the server's, not the scheduler's
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
rps() { awk '/Requests\/sec/ {print $2}'; }
# wrk --latency's 99% line, in ms
p99() { awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}'; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# Where the servers and wrk run (PIN=1: one core each), and wrk's thread count.
SERVER=() CLIENT=() WRK_THREADS=2 NGINX_WORKERS=2
if [ -n "${PIN:-}" ]; then
  SERVER=(taskset -c 1) CLIENT=(taskset -c 0) WRK_THREADS=1 NGINX_WORKERS=1
fi
WRK_BIN=$(command -v wrk) || { echo "wrk is not installed (apt-get install -y wrk)"; exit 1; }
wrk() { "${CLIENT[@]}" "$WRK_BIN" -t"$WRK_THREADS" "$@"; }

HTTP=$(port)
export LATCHKEY_DATA_DIR="$WORK/data" LATCHKEY_LISTEN__HTTP="127.0.0.1:$HTTP" \
  LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" \
  LATCHKEY_LISTEN__LDAP="127.0.0.1:$(port)" LATCHKEY_LISTEN__LDAPS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL=warn
cat > "$WORK/bp.yaml" <<YAML
users:
  - username: bench
    name: Bench
    email: bench@example.test
    password: bench-password
providers:
  - name: bench-proxy
    type: proxy
    mode: forward_single
    external_host: http://app.bench.test
    # Rules in the path of every check (the request matches the last one).
    access_rules:
      - name: health
        resources: ["^/api/health$"]
        policy: bypass
      - name: admin
        domain: admin.bench.test
        policy: two_factor
      - name: lan
        domain: app.bench.test
        resources: ["^/lan/"]
        networks: [10.0.0.0/8]
        policy: bypass
      - name: rest
        domain: "*.bench.test"
        policy: one_factor
applications:
  - name: Bench app
    slug: bench-app
    provider: bench-proxy
outposts:
  - name: embedded
    providers: [bench-proxy]
YAML
"$BIN" blueprint apply "$WORK/bp.yaml" >/dev/null
"${SERVER[@]}" "$BIN" serve 2>"$WORK/serve.log" &
LK=$!
until curl -sf "http://127.0.0.1:$HTTP/-/health/ready/" >/dev/null; do sleep 0.05; done
EXEC="http://127.0.0.1:$HTTP/api/v1/flows/executor/default-authentication-flow/"
curl -s -c "$WORK/jar" -b "$WORK/jar" "$EXEC" >/dev/null
curl -s -c "$WORK/jar" -b "$WORK/jar" -H 'content-type: application/json' -d '{"uid_field":"bench","password":"bench-password"}' "$EXEC" >/dev/null
SESSION=$(awk '$6=="latchkey_session" {print $7}' "$WORK/jar")
[ -n "$SESSION" ] || { echo "login failed"; exit 1; }
CHECK="http://127.0.0.1:$HTTP/outpost.goauthentik.io/auth/nginx"
HDRS=(-H "Cookie: latchkey_session=$SESSION" -H "X-Original-URL: http://app.bench.test/some/page?x=1")
code=$(curl -s -o /dev/null -w '%{http_code}' "${HDRS[@]}" "$CHECK")
[ "$code" = 200 ] || { echo "forward-auth check answered $code, not 200"; exit 1; }

# An app password for the Basic check (non-browser clients).
APP_SECRET=$("$BIN" app-password create bench --name bench)
BASIC=(-H "Authorization: Basic $(printf 'bench:%s' "$APP_SECRET" | base64 -w0)" -H "X-Original-URL: http://app.bench.test/some/page?x=1")
code=$(curl -s -o /dev/null -w '%{http_code}' "${BASIC[@]}" "$CHECK")
[ "$code" = 200 ] || { echo "Basic check answered $code, not 200"; exit 1; }

NGINX=$(port)
cat > "$WORK/nginx.conf" <<NGX
worker_processes $NGINX_WORKERS; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$NGINX; location / { return 200 "ok"; } } }
NGX
"${SERVER[@]}" nginx -c "$WORK/nginx.conf"

echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo || true
echo "== forward-auth check (valid cookie) vs nginx return 200: wrk -t$WRK_THREADS -c64 -d10s --latency, 3 runs each${PIN:+ (servers on CPU 1, wrk on CPU 0)}"
for i in 1 2 3; do wrk -c64 -d10s --latency "${HDRS[@]}" "$CHECK" > "$WORK/lk.$i"; done
for i in 1 2 3; do wrk -c64 -d10s --latency "http://127.0.0.1:$NGINX/" > "$WORK/ngx.$i"; done
for i in 1 2 3; do wrk -c64 -d10s --latency "${BASIC[@]}" "$CHECK" > "$WORK/basic.$i"; done
grep -h 'Non-2xx' "$WORK"/lk.* && { echo "some checks were not 200"; exit 1; } || true
LKR=$(for i in 1 2 3; do rps < "$WORK/lk.$i"; done | tr '\n' ' ')
NGR=$(for i in 1 2 3; do rps < "$WORK/ngx.$i"; done | tr '\n' ' ')
LKP=$(for i in 1 2 3; do p99 < "$WORK/lk.$i"; done | tr '\n' ' ')
NGP=$(for i in 1 2 3; do p99 < "$WORK/ngx.$i"; done | tr '\n' ' ')
LKM=$(echo "$LKR" | tr ' ' '\n' | grep . | median)
NGM=$(echo "$NGR" | tr ' ' '\n' | grep . | median)
echo "latchkey auth/nginx: $LKM req/s (runs: $LKR) p99 ms (runs: $LKP) median $(echo "$LKP" | tr ' ' '\n' | grep . | median)"
echo "nginx return 200:    $NGM req/s (runs: $NGR) p99 ms (runs: $NGP) median $(echo "$NGP" | tr ' ' '\n' | grep . | median)"
echo "ratio: $(awk -v a="$LKM" -v b="$NGM" 'BEGIN {printf "%.1f %%", 100*a/b}')"
grep -h 'Non-2xx' "$WORK"/basic.* && { echo "some Basic checks were not 200"; exit 1; } || true
BAR=$(for i in 1 2 3; do rps < "$WORK/basic.$i"; done | tr '\n' ' ')
BAP=$(for i in 1 2 3; do p99 < "$WORK/basic.$i"; done | tr '\n' ' ')
BAM=$(echo "$BAR" | tr ' ' '\n' | grep . | median)
echo "latchkey Basic app password: $BAM req/s (runs: $BAR) p99 ms (runs: $BAP) median $(echo "$BAP" | tr ' ' '\n' | grep . | median); ratio to nginx: $(awk -v a="$BAM" -v b="$NGM" 'BEGIN {printf "%.1f %%", 100*a/b}')"

echo "== RSS of latchkey serve around two 60 s check runs (wrk -c64 -d60s)"
echo "before: $(rss $LK) KiB"
wrk -c64 -d60s "${HDRS[@]}" "$CHECK" | rps | sed 's/^/req\/s during: /'
echo "after:  $(rss $LK) KiB"
wrk -c64 -d60s "${HDRS[@]}" "$CHECK" | rps | sed 's/^/req\/s during the second: /'
echo "after the second: $(rss $LK) KiB"
sleep 5
echo "after 5 s idle: $(rss $LK) KiB"

echo "== check latency, open-loop probe (bench/probe.py, 200 req/s for 10 s): alone, then during wrk -c64"
export PROBE_HEADERS='{"X-Original-URL": "http://app.bench.test/some/page?x=1"}'
echo "alone:       $("${CLIENT[@]}" python3 bench/probe.py "$CHECK" "latchkey_session=$SESSION" 200 10)"
wrk -c64 -d14s "${HDRS[@]}" "$CHECK" > /dev/null &
LOAD=$!
sleep 2
echo "during wrk:  $("${CLIENT[@]}" python3 bench/probe.py "$CHECK" "latchkey_session=$SESSION" 200 10)"
wait "$LOAD"
