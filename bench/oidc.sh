#!/usr/bin/env bash
# OIDC endpoint throughput (issue 7 targets), loopback only, bounded in time.
# Usage: bench/oidc.sh   (needs wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey-target}"
cargo build --release -q -p latchkey
BIN="$CARGO_TARGET_DIR/release/latchkey"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rps() { awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

HTTP=$(port)
export LATCHKEY_DATA_DIR="$WORK/data" LATCHKEY_LISTEN__HTTP="127.0.0.1:$HTTP" \
  LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" \
  LATCHKEY_LISTEN__LDAP="127.0.0.1:$(port)" LATCHKEY_LISTEN__LDAPS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL=warn
cat > "$WORK/bp.yaml" <<'YAML'
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
curl -sf -u bench:bench-secret -d 'grant_type=client_credentials&scope=openid' "$BASE/application/o/token/" >/dev/null
cat > "$WORK/token.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic YmVuY2g6YmVuY2gtc2VjcmV0"
wrk.body = "grant_type=client_credentials&scope=openid"
LUA
echo "== token endpoint (client_credentials: client auth + RS256-signed access token): wrk -t2 -c64 -d10s, 3 runs"
for i in 1 2 3; do wrk -t2 -c64 -d10s -s "$WORK/token.lua" "$BASE/application/o/token/" | rps; done > "$WORK/tok"
echo "median $(median < "$WORK/tok") req/s (runs: $(tr '\n' ' ' < "$WORK/tok"))"
echo "== discovery and JWKS (from memory): wrk -t2 -c64 -d10s"
echo "discovery: $(wrk -t2 -c64 -d10s "$BASE/application/o/bench/.well-known/openid-configuration" | rps) req/s"
echo "jwks:      $(wrk -t2 -c64 -d10s "$BASE/application/o/bench/jwks/" | rps) req/s"
