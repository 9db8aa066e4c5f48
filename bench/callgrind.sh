#!/usr/bin/env bash
# Instructions per request in limpet's own process (user space), counted by
# valgrind's callgrind: deterministic where wall-clock runs on this shared
# 2-core machine are not. Hardware counters are not available in this VM
# (`perf stat -e instructions` says <not supported>).
#
#   bench/callgrind.sh [N]          N requests after a warm-up (default 5000;
#                                   20000 for MODE h2 and h2c)
#
# Environment: RUST_LOG (default warn), LIMPET (binary; default target/release/limpet),
# AFFINITY (cookie | ip-hash, default cookie), KEEP=dir (keep callgrind.out there),
# PORT_BASE (default 18280: nginx on +1..+3, limpet on +10),
# MODE: h1 (default: HTTP/1.1 keep-alive, N requests over 4 connections,
# bench/requests.py; `keepalive` is another name for it), close (one
# connection per request, `Connection: close`: the cost of a new connection
# with its one request), h2 (TLS listener,
# ALPN h2) or h2c (prior knowledge on the plain listener); the h2 modes load
# limpet with `h2load -c 20 -m 10 -n N` and the affinity cookie (fetched first)
# on every request. The 20 connections (and, for h2, their TLS handshakes)
# count in the figure: spread over N requests.
# Prints Ir per request and the top functions by inclusive cost.
set -euo pipefail

MODE=${MODE:-h1}
case $MODE in
h1 | keepalive) N=${1:-5000} CLIENT_MODE=() ;;
close) N=${1:-5000} CLIENT_MODE=(--close) ;;
h2 | h2c) N=${1:-20000} ;;
*) echo "MODE is h1, close, h2 or h2c" >&2 && exit 2 ;;
esac
AFFINITY=${AFFINITY:-cookie}
BASE=${PORT_BASE:-18280}
B1=$((BASE + 1)) B2=$((BASE + 2)) B3=$((BASE + 3)) PORT=$((BASE + 10))
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
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
backends_nginx_conf "$DIR" 1024 "$B1" "$B2" "$B3" >"$DIR/nginx.conf"
if [ "$MODE" = h2 ]; then
    SCHEME=https
    make_cert "$DIR" cert ecdsa
    printf '[listen]\nhttps = ["127.0.0.1:%s"]\n[tls]\ncerts = [ { cert = "%s", key = "%s" } ]\n' \
        "$PORT" "$DIR/cert.pem" "$DIR/cert.key" >"$DIR/limpet.toml"
else
    SCHEME=http
    printf '[listen]\nhttp = ["127.0.0.1:%s"]\n' "$PORT" >"$DIR/limpet.toml"
fi
limpet_upstream_toml "$AFFINITY" "$B1" "$B2" "$B3" >>"$DIR/limpet.toml"

nginx -p "$DIR" -c "$DIR/nginx.conf" &
PIDS+=($!)
RUST_LOG=${RUST_LOG:-warn} valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out" \
    "$LIMPET" run --config "$DIR/limpet.toml" 2>"$DIR/limpet.log" &
LPID=$!
PIDS+=("$LPID")
URL="$SCHEME://127.0.0.1:$PORT/"
CURL=(curl -s -k)
case $MODE in h2) CURL+=(--http2) ;; h2c) CURL+=(--http2-prior-knowledge) ;; esac
for _ in $(seq 200); do
    "${CURL[@]}" -o /dev/null "$URL" && break
    sleep 0.1
done
cookie=$("${CURL[@]}" -D - -o /dev/null "$URL" | cookie_pair)
# One run of `n` requests; for h2, h2load's summary lines, failing unless
# every request got a 2xx.
load() {
    local n=$1
    if [ "$MODE" != h2 ] && [ "$MODE" != h2c ]; then
        python3 "$HERE/requests.py" --port "$PORT" --n "$n" --cookie "$cookie" "${CLIENT_MODE[@]}"
        return
    fi
    local out
    out=$(h2load -c 20 -m 10 -n "$n" ${cookie:+-H "cookie: $cookie"} "$URL")
    echo "$out" | grep -E '^(requests|status codes):'
    echo "$out" | grep -q "status codes: $n 2xx" || {
        echo "h2load: not every request got a 2xx" >&2
        echo "$out" >&2
        return 1
    }
}
load 500 >/dev/null
callgrind_control -z "$LPID" >/dev/null
load "$N"
callgrind_control -d "$LPID" >/dev/null
sleep 0.5
kill "$LPID"
wait "$LPID" 2>/dev/null || true
out=$(ls -t "$DIR"/callgrind.out* | grep -v '\.out$' | head -1 || true)
[ -n "$out" ] || out="$DIR/callgrind.out"
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "MODE=$MODE RUST_LOG=${RUST_LOG:-warn} affinity=$AFFINITY: $total instructions for $N requests: $((total / N)) per request"
if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP/callgrind.out"; fi
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/^Ir/,$p' | head -60 | cut -c1-200 || true
