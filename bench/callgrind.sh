#!/usr/bin/env bash
# Instructions per request in limpet's own process (user space), counted by
# valgrind's callgrind: deterministic where wall-clock runs on this shared
# 2-core machine are not. Hardware counters are not available in this VM
# (`perf stat -e instructions` says <not supported>).
#
#   bench/callgrind.sh [N]          N requests after a warm-up (default 5000)
#
# Environment: RUST_LOG (default warn), LIMPET (binary; default target/release/limpet),
# AFFINITY (cookie | ip-hash, default cookie), KEEP=dir (keep callgrind.out there),
# MODE (keepalive: N requests over 4 keep-alive connections, the default; close:
# one connection per request, `Connection: close`, so the figure is the cost of
# a new connection with its one request), PORT_BASE (default 18280: nginx on
# +1..+3, limpet on +10).
# Prints Ir per request and the top functions by inclusive cost.
set -euo pipefail

N=${1:-5000}
AFFINITY=${AFFINITY:-cookie}
MODE=${MODE:-keepalive}
case $MODE in
keepalive) CLIENT_MODE=() ;;
close) CLIENT_MODE=(--close) ;;
*) echo "MODE is keepalive or close" >&2; exit 2 ;;
esac
PORT_BASE=${PORT_BASE:-18280}
P1=$((PORT_BASE + 1)) P2=$((PORT_BASE + 2)) P3=$((PORT_BASE + 3)) LP=$((PORT_BASE + 10))
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin"
LIMPET=${LIMPET:-$ROOT/target/release/limpet}
[ -x "$LIMPET" ] || (cd "$ROOT" && cargo build --release --quiet --bin limpet)

DIR=$(mktemp -d /tmp/limpet-callgrind.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

mkdir -p "$DIR/logs"
cat >"$DIR/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $DIR/nginx.pid;
error_log $DIR/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$P1;
        listen 127.0.0.1:$P2;
        listen 127.0.0.1:$P3;
        location / { return 200 "ok\n"; }
    }
}
EOF
cat >"$DIR/limpet.toml" <<EOF
[listen]
http = ["127.0.0.1:$LP"]
[runtime]
worker_threads = 1
[upstream.app]
affinity = "$AFFINITY"
[upstream.app.cookie]
secret = "bench-secret-bench-secret-bench-secret"
[[upstream.app.backend]]
name = "app1"
addr = "127.0.0.1:$P1"
replica = "app2"
[[upstream.app.backend]]
name = "app2"
addr = "127.0.0.1:$P2"
replica = "app3"
[[upstream.app.backend]]
name = "app3"
addr = "127.0.0.1:$P3"
replica = "app1"
EOF

nginx -p "$DIR" -c "$DIR/nginx.conf" &
PIDS+=($!)
RUST_LOG=${RUST_LOG:-warn} valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" \
    "$LIMPET" run --config "$DIR/limpet.toml" 2>"$DIR/limpet.log" &
LPID=$!
PIDS+=("$LPID")
for _ in $(seq 200); do
    curl -s -o /dev/null http://127.0.0.1:$LP/ && break
    sleep 0.1
done
cookie=$(curl -s -D - -o /dev/null http://127.0.0.1:$LP/ |
    awk 'tolower($1) == "set-cookie:" { sub(/\r$/, ""); split($2, a, ";"); print a[1]; exit }')
python3 "$HERE/requests.py" --port $LP --n 500 --cookie "$cookie" "${CLIENT_MODE[@]}" >/dev/null
callgrind_control -z "$LPID" >/dev/null
python3 "$HERE/requests.py" --port $LP --n "$N" --cookie "$cookie" "${CLIENT_MODE[@]}"
callgrind_control -d "$LPID" >/dev/null
sleep 0.5
kill "$LPID"
wait "$LPID" 2>/dev/null || true
out=$(ls -t "$DIR"/callgrind.out* | grep -v '\.out$' | head -1 || true)
[ -n "$out" ] || out="$DIR/callgrind.out"
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "RUST_LOG=${RUST_LOG:-warn} affinity=$AFFINITY mode=$MODE: $total instructions for $N requests: $((total / N)) per request"
if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP/callgrind.out"; fi
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/^Ir/,$p' | head -60 | cut -c1-200 || true
