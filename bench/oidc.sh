#!/usr/bin/env bash
# OIDC endpoint throughput (issue 7 targets), loopback only, bounded in time, with nginx
# `return 200` measured in the same run as the baseline.
#   - userinfo with a user's valid access token (JWT verify + in-memory user cache)
#   - token endpoint: authorization-code exchange (single-use codes made beforehand) and
#     client_credentials (client auth + RS256 signing, replayable)
#   - discovery and JWKS (from memory)
# Usage: bench/oidc.sh   (needs wrk and nginx: apt-get install -y wrk nginx-light)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey-target}"
# BENCH_BIN=path measures that binary instead of building one.
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release -q -p latchkey; fi
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/latchkey}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rps() { awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# DUR and RUNS shorten a run on a busy machine (defaults: 10s, 3 runs).
DUR=${DUR:-10s} RUNS=${RUNS:-3}
runs3() { for _ in $(seq "$RUNS"); do wrk "$@" | tee -a "$WORK/all" | rps; done | tr '\n' ' '; }

HTTP=$(port)
export LATCHKEY_DATA_DIR="$WORK/data" LATCHKEY_LISTEN__HTTP="127.0.0.1:$HTTP" \
  LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" \
  LATCHKEY_LISTEN__LDAP="127.0.0.1:$(port)" LATCHKEY_LISTEN__LDAPS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL=warn
cat > "$WORK/bp.yaml" <<'YAML'
groups:
  - name: family
users:
  - username: bench
    name: Bench User
    email: bench@example.test
    password: bench-password
    groups: [family]
providers:
  - name: Bench
    type: oauth2
    client_type: confidential
    client_id: bench
    client_secret: bench-secret
    redirect_uris: [http://127.0.0.1/cb]
applications:
  - name: Bench
    slug: bench
    provider: Bench
YAML
"$BIN" blueprint apply "$WORK/bp.yaml" >/dev/null
"$BIN" serve 2>"$WORK/serve.log" &
until curl -sf "http://127.0.0.1:$HTTP/-/health/ready/" >/dev/null; do sleep 0.05; done
BASE="http://127.0.0.1:$HTTP"
EXEC="$BASE/api/v1/flows/executor/default-authentication-flow/"
curl -s -c "$WORK/jar" -b "$WORK/jar" "$EXEC" >/dev/null
curl -s -c "$WORK/jar" -b "$WORK/jar" -H 'content-type: application/json' \
  -d '{"uid_field":"bench","password":"bench-password"}' "$EXEC" >/dev/null
SESSION=$(awk '$6=="latchkey_session" {print $7}' "$WORK/jar")
[ -n "$SESSION" ] || { echo "login failed"; exit 1; }

# Authorization codes, made over one keep-alive connection (they are single-use, live 60 s).
codes() {
  python3 - "$HTTP" "$SESSION" "$1" <<'PY'
import http.client, sys, urllib.parse
port, session, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
q = urllib.parse.urlencode({"client_id": "bench", "redirect_uri": "http://127.0.0.1/cb", "response_type": "code",
                            "scope": "openid profile email groups", "state": "s"})
for _ in range(n):
    c.request("GET", "/application/o/authorize/?" + q, headers={"Cookie": "latchkey_session=" + session})
    r = c.getresponse(); r.read()
    loc = r.getheader("Location") or ""
    code = urllib.parse.parse_qs(urllib.parse.urlparse(loc).query).get("code")
    if not code:
        sys.exit(f"authorize answered {r.status} {loc}")
    print(code[0])
PY
}
AUTH="Authorization: Basic $(printf 'bench:bench-secret' | base64)"
ACCESS=$(curl -sf -H "$AUTH" -d "grant_type=authorization_code&code=$(codes 1)&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb" \
  "$BASE/application/o/token/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -sf -H "Authorization: Bearer $ACCESS" "$BASE/application/o/userinfo/" | grep -q '"groups":\["family"\]' \
  || { echo "userinfo did not answer the user's claims"; exit 1; }

NGINX=$(port)
cat > "$WORK/nginx.conf" <<NGX
worker_processes 2; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$NGINX; location / { return 200 "ok"; } } }
NGX
nginx -c "$WORK/nginx.conf"

echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo || true
echo "== wrk -t2 -c64 -d$DUR, $RUNS runs each (median, then the runs)"
NG=$(runs3 -t2 -c64 -d"$DUR" "http://127.0.0.1:$NGINX/")
UI=$(runs3 -t2 -c64 -d"$DUR" -H "Authorization: Bearer $ACCESS" "$BASE/application/o/userinfo/")
cat > "$WORK/cc.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $(printf 'bench:bench-secret' | base64)"
wrk.body = "grant_type=client_credentials&scope=openid"
LUA
CC=$(runs3 -t2 -c64 -d"$DUR" -s "$WORK/cc.lua" "$BASE/application/o/token/")
DI=$(runs3 -t2 -c64 -d"$DUR" "$BASE/application/o/bench/.well-known/openid-configuration")
JW=$(runs3 -t2 -c64 -d"$DUR" "$BASE/application/o/bench/jwks/")
if grep -q 'Non-2xx' "$WORK/all"; then echo "some answers were not 2xx:"; grep 'Non-2xx' "$WORK/all"; exit 1; fi
m() { echo "$1" | tr ' ' '\n' | grep . | median; }
NGM=$(m "$NG")
line() { printf '%-44s %9s req/s  (runs: %s) %s\n' "$1" "$(m "$2")" "$2" "$(awk -v a="$(m "$2")" -v b="$NGM" 'BEGIN {printf "= %.1f %% of nginx", 100*a/b}')"; }
line "nginx return 200 (baseline)" "$NG"
line "userinfo (valid user token)" "$UI"
line "token: client_credentials (RS256)" "$CC"
line "discovery" "$DI"
line "jwks" "$JW"

# Code exchange: each request redeems one fresh code; the codes are split between wrk's threads.
# Codes live 60 s: make only as many as a 4 s run redeems on a fast machine, and say how long
# making them took (a slow machine must still redeem them well inside their minute).
N=${CODES:-10000}
echo "== token: authorization_code exchange, $N codes made first, wrk -t2 -c16 -d4s (one run: codes are single-use)"
made=$SECONDS
codes "$N" > "$WORK/codes"
echo "(made in $((SECONDS - made)) s)"
cat > "$WORK/code.lua" <<LUA
local threads, counter = {}, 0
function setup(thread) thread:set("id", counter); counter = counter + 1; table.insert(threads, thread) end
function init(args)
  codes, i = {}, 0
  local n = 0
  for line in io.lines("$WORK/codes") do
    if n % 2 == id then table.insert(codes, line) end
    n = n + 1
  end
end
function request()
  i = i + 1
  local code = codes[i] or "exhausted"
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Basic $(printf 'bench:bench-secret' | base64)"},
    "grant_type=authorization_code&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb&code=" .. code)
end
LUA
wrk -t2 -c16 -d4s -s "$WORK/code.lua" "$BASE/application/o/token/" > "$WORK/code.out"
grep -E 'Requests/sec|Non-2xx|requests in' "$WORK/code.out"
grep -q 'Non-2xx' "$WORK/code.out" && echo "(codes ran out: raise CODES; the req/s above includes refusals)" || true
