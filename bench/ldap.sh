#!/usr/bin/env bash
# Side-by-side LDAP benchmark: Latchkey against OpenLDAP's slapd (Debian package, mdb backend,
# run unprivileged-style from a temp dir with its own slapd.conf), loaded with the same users,
# groups and memberships, driven by the same load generator (bench/ldap-load) in the same run.
# Usage: bench/ldap.sh [SIZE...]        (default sizes: 1000 100000)
#   env: RUNS (3 per op and server), SECS (5 per run), CONNS (8), GROUPS_PER_1000 (1: at least 10 groups, 100 at 100,000 users)
# Needs: slapd ldap-utils (apt-get install -y slapd ldap-utils), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey-target}"
RUNS="${RUNS:-3}" SECS="${SECS:-5}" CONNS="${CONNS:-8}"
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 100000)
[ -x /usr/sbin/slapd ] || { echo "slapd is missing: apt-get install -y slapd ldap-utils" >&2; exit 1; }

cargo build --release -q -p latchkey
cargo build --release -q --manifest-path bench/ldap-load/Cargo.toml
BIN="$CARGO_TARGET_DIR/release/latchkey"
LOAD="$CARGO_TARGET_DIR/release/ldap-load"
WORK="$(mktemp -d)"
cleanup() {
  [ -f "$WORK/slapd.pid" ] && kill "$(cat "$WORK/slapd.pid")" 2>/dev/null
  [ -n "${LK_PID:-}" ] && kill "$LK_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1==k {print $2}'; }
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }
BASE="dc=example,dc=test"

echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo || true; /usr/sbin/slapd -VV 2>&1 | head -1

# The same argon2id hash for every Latchkey user: one made by `latchkey user create`.
SCRATCH="$WORK/scratch"
echo "bench-password" | LATCHKEY_DATA_DIR="$SCRATCH" "$BIN" user create hashsource --password-stdin >/dev/null
ARGON=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select password_hash from users where username=?",("hashsource",)).fetchone()[0])' "$SCRATCH/latchkey.db")
SSHA=$(/usr/sbin/slappasswd -h '{SSHA}' -s bench-password)

# run_load NAME ADDR OP [key=value...] → prints the median line fields for RUNS runs
load() {
  local addr=$1 op=$2; shift 2
  "$LOAD" "$addr" "$op" "$CONNS" "$SECS" base="$BASE" users="$USERS" groups="$NGROUPS" "$@"
}

for USERS in "${SIZES[@]}"; do
  NGROUPS=$(( USERS / 1000 * ${GROUPS_PER_1000:-1} )); [ "$NGROUPS" -ge 10 ] || NGROUPS=10
  echo; echo "==== $USERS users, $NGROUPS groups (each user in one), CONNS=$CONNS, ${SECS}s x $RUNS runs"
  D="$WORK/$USERS"; mkdir -p "$D/slapd-db"
  python3 bench/ldap_data.py "$USERS" "$NGROUPS" "$ARGON" "$SSHA" "$D"

  # --- slapd: mdb, the indexes an admin would set, memberOf kept by the memberof overlay.
  SP=$(port)
  cat > "$D/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile $WORK/slapd.pid
argsfile $WORK/slapd.args
# Paged searches may walk the whole directory, as they may in Latchkey.
sizelimit size.soft=unlimited size.hard=unlimited size.prtotal=unlimited
database mdb
maxsize 17179869184
suffix "$BASE"
rootdn "cn=admin,$BASE"
rootpw bench-admin
directory $D/slapd-db
index objectClass eq
index uid,cn,mail eq
index member,memberOf eq
overlay memberof
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by * none
CONF
  t0=$(now_ms); /usr/sbin/slapadd -q -f "$D/slapd.conf" -l "$D/slapd.ldif"; t1=$(now_ms)
  echo "slapd: slapadd $((t1-t0)) ms"
  /usr/sbin/slapd -f "$D/slapd.conf" -h "ldap://127.0.0.1:$SP/" -d 0 2>"$D/slapd.log" &
  until ldapsearch -x -H "ldap://127.0.0.1:$SP" -s base -b "" >/dev/null 2>&1; do sleep 0.05; done
  SLAPD_PID=$(cat "$WORK/slapd.pid")

  # --- Latchkey: same data through a blueprint.
  export LATCHKEY_DATA_DIR="$D/latchkey" LATCHKEY_LISTEN__HTTP="127.0.0.1:$(port)" \
    LATCHKEY_LISTEN__HTTPS="127.0.0.1:$(port)" LATCHKEY_LISTEN__METRICS="127.0.0.1:$(port)" \
    LATCHKEY_LISTEN__LDAPS="127.0.0.1:$(port)" LATCHKEY_LOG__LEVEL="warn,latchkey_ldap=debug"
  t0=$(now_ms); "$BIN" blueprint apply "$D/latchkey.yaml" >/dev/null
  python3 bench/ldap_data.py --load-sqlite "$D/latchkey/latchkey.db" "$USERS" "$NGROUPS" "$ARGON"; t1=$(now_ms)
  echo "latchkey: blueprint + bulk insert $((t1-t0)) ms"
  start_latchkey() {  # start_latchkey PORT [env...]
    local p=$1; shift
    t0=$(now_ms)
    env "$@" LATCHKEY_LISTEN__LDAP="127.0.0.1:$p" "$BIN" serve 2>"$D/latchkey.log" & LK_PID=$!
    until curl -sf "http://${LATCHKEY_LISTEN__HTTP}/-/health/ready/" >/dev/null; do sleep 0.02; done
    t1=$(now_ms)
    # The first search waits for the first snapshot of the directory.
    ldapsearch -x -H "ldap://127.0.0.1:$p" -D "cn=reader,ou=users,$BASE" -w bench-password -b "$BASE" "(uid=user0)" 1.1 >/dev/null
    t2=$(now_ms)
    echo "latchkey: start to ready $((t1-t0)) ms; first search (snapshot built) $((t2-t1)) ms; RSS $(rss_mib $LK_PID) MiB"
  }
  stop_latchkey() { kill "$LK_PID"; wait "$LK_PID" 2>/dev/null || true; LK_PID=; }
  LP=$(port)
  start_latchkey "$LP"
  grep -o 'LDAP snapshot built.*' "$D/latchkey.log" | tail -1 || true
  echo "slapd: RSS $(rss_mib $SLAPD_PID) MiB"

  READ=(bind_dn="cn=reader,ou=users,$BASE" bind_pw=bench-password)
  # op label | load args
  run_pair() {
    local label=$1; shift
    local s l
    for r in $(seq "$RUNS"); do
      s=$(load "127.0.0.1:$SP" "$@" | field ops_per_s); echo "$s" >>"$D/$label.slapd"
      l=$(load "127.0.0.1:$LP" "$@" | field ops_per_s); echo "$l" >>"$D/$label.latchkey"
    done
    local sm lm
    sm=$(median <"$D/$label.slapd"); lm=$(median <"$D/$label.latchkey")
    printf '%-28s slapd %10s ops/s   latchkey %10s ops/s   ratio %s   (runs slapd: %s; latchkey: %s)\n' \
      "$label" "$sm" "$lm" "$(awk -v a="$lm" -v b="$sm" 'BEGIN {printf "%.2f", a/b}')" \
      "$(paste -sd/ "$D/$label.slapd")" "$(paste -sd/ "$D/$label.latchkey")"
  }
  # One latency sample line per server for the record.
  detail() { echo "  slapd:    $(load "127.0.0.1:$SP" "$@")"; echo "  latchkey: $(load "127.0.0.1:$LP" "$@")"; }

  run_pair "search uid" uid "${READ[@]}"; detail uid "${READ[@]}"
  run_pair "search memberOf" memberof "${READ[@]}"; detail memberof "${READ[@]}"
  run_pair "bind same account (cached)" bind same=1; detail bind same=1
  before=$(rss_mib $LK_PID)
  run_pair "paged subtree, all users" all "${READ[@]}" page=500; detail all "${READ[@]}" page=500
  echo "latchkey RSS around the paged full-directory searches: $before → $(rss_mib $LK_PID) MiB; slapd $(rss_mib $SLAPD_PID) MiB"

  # A change to the directory: time until the rebuilt snapshot shows it (rebuild off the request path).
  t0=$(now_ms)
  echo "x-Pass-12345-bench" | "$BIN" user create newcomer --password-stdin >/dev/null
  until ldapsearch -x -H "ldap://127.0.0.1:$LP" -D "cn=reader,ou=users,$BASE" -w bench-password -b "$BASE" "(uid=newcomer)" 1.1 2>/dev/null | grep -q '^dn:'; do sleep 0.01; done
  echo "latchkey: user created → visible over LDAP in $(( $(now_ms) - t0 )) ms (includes the CLI run)"
  grep -o 'LDAP snapshot built.*' "$D/latchkey.log" | tail -1 || true

  # Uncached binds: every bind hashes (argon2id in Latchkey; salted SHA-1 in slapd, its default).
  stop_latchkey
  start_latchkey "$LP" LATCHKEY_LDAP__BIND_CACHE_TTL=1ns
  run_pair "bind many accounts (uncached)" bind; detail bind
  stop_latchkey
  kill "$SLAPD_PID"; wait "$SLAPD_PID" 2>/dev/null || true
  rm -f "$WORK/slapd.pid"
done
