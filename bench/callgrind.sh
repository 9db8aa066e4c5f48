#!/usr/bin/env bash
# Instructions per request in limpet's own process (user space), counted by
# valgrind's callgrind: deterministic where wall-clock runs on this shared
# 2-core machine are not. Hardware counters are not available in this VM
# (`perf stat -e instructions` says <not supported>).
#
#   bench/callgrind.sh [N]          N requests after a warm-up (default 5000)
#
# Environment: RUST_LOG (default warn), LIMPET (binary; default target/release/limpet),
# AFFINITY (cookie | ip-hash, default cookie), KEEP=dir (keep callgrind.out there).
# Prints Ir per request and the top functions by inclusive cost.
set -euo pipefail

N=${1:-5000}
AFFINITY=${AFFINITY:-cookie}
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
        listen 127.0.0.1:18281;
        listen 127.0.0.1:18282;
        listen 127.0.0.1:18283;
        location / { return 200 "ok\n"; }
    }
}
EOF
cat >"$DIR/limpet.toml" <<EOF
[listen]
http = ["127.0.0.1:18290"]
[runtime]
worker_threads = 1
[upstream.app]
affinity = "$AFFINITY"
[upstream.app.cookie]
secret = "bench-secret-bench-secret-bench-secret"
[[upstream.app.backend]]
name = "app1"
addr = "127.0.0.1:18281"
replica = "app2"
[[upstream.app.backend]]
name = "app2"
addr = "127.0.0.1:18282"
replica = "app3"
[[upstream.app.backend]]
name = "app3"
addr = "127.0.0.1:18283"
replica = "app1"
EOF

nginx -p "$DIR" -c "$DIR/nginx.conf" &
PIDS+=($!)
RUST_LOG=${RUST_LOG:-warn} valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" \
    "$LIMPET" run --config "$DIR/limpet.toml" 2>"$DIR/limpet.log" &
LPID=$!
PIDS+=("$LPID")
for _ in $(seq 200); do
    curl -s -o /dev/null http://127.0.0.1:18290/ && break
    sleep 0.1
done
cookie=$(curl -s -D - -o /dev/null http://127.0.0.1:18290/ |
    awk 'tolower($1) == "set-cookie:" { sub(/\r$/, ""); split($2, a, ";"); print a[1]; exit }')
python3 "$HERE/requests.py" --port 18290 --n 500 --cookie "$cookie" >/dev/null
callgrind_control -z "$LPID" >/dev/null
python3 "$HERE/requests.py" --port 18290 --n "$N" --cookie "$cookie"
callgrind_control -d "$LPID" >/dev/null
sleep 0.5
kill "$LPID"
wait "$LPID" 2>/dev/null || true
out=$(ls -t "$DIR"/callgrind.out* | grep -v '\.out$' | head -1 || true)
[ -n "$out" ] || out="$DIR/callgrind.out"
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "RUST_LOG=${RUST_LOG:-warn} affinity=$AFFINITY: $total instructions for $N requests: $((total / N)) per request"
if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP/callgrind.out"; fi
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/^Ir/,$p' | head -60 | cut -c1-200 || true
