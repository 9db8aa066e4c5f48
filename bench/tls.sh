#!/usr/bin/env bash
# What TLS costs limpet, HAProxy and nginx (issue 14 items 2 and 3): each proxy
# terminates TLS 1.3 on one core (CPU 0) with an ECDSA P-256 or an RSA 2048
# certificate, in front of the same three nginx backends (CPU 1, beside the
# client), with their default session resumption (limpet: tickets and a
# session cache; HAProxy: tickets and its cache; nginx: tickets).
#
#   bench/tls.sh [load]          handshakes/s and CPU per handshake (from /proc,
#                                user + system, the proxy and its children) for
#                                new connections with one request each: `new`
#                                (full handshakes: openssl s_time -new) and
#                                `reuse` (resumed: s_time -reuse, which offers
#                                the first connection's session every time).
#                                Load-dependent: run it on a quiet machine.
#   bench/tls.sh callgrind [N]   each of VARIANTS under valgrind: instructions
#                                per full handshake, per resumed one (each with
#                                its request), and per TLS keep-alive request
#                                (the cookie sent back). Load-independent. N
#                                connections (default 300), 10 N requests.
#                                Under valgrind ring finds no ADX/BMI2 and takes
#                                its slowest X25519, P-256 and RSA code, OpenSSL
#                                keeps AVX2: RSA-2048 signing compares unfairly
#                                there; compare RSA with `load`.
#   bench/tls.sh syscalls [N]    system calls counted by strace -c: per keep-alive
#                                request over N requests (default 5000), plain
#                                and TLS, and per new TLS connection (full and
#                                resumed, N/10 connections); limpet and HAProxy.
#   bench/tls.sh idle [N]        bytes of RSS per idle TLS keep-alive connection
#                                (bench/idle_conns.py --tls, N connections,
#                                default 2000) for each of VARIANTS.
#
# Environment: ROUNDS=3 DURATION=5 (seconds per s_time run) CLIENTS=2 (s_time
# processes at once) VARIANTS="haproxy nginx limpet" CERTS="ecdsa rsa"
# MODES="new reuse" LIMPET=path (default target/release/limpet) LIMPET_BASE=path
# (another limpet build, the variant `base`, e.g. VARIANTS="base limpet") RUST_LOG=warn
# (limpet's; "info" writes the access log). Ports 19300-19399.
set -euo pipefail

WHAT=${1:-load}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
export PATH="$PATH:/usr/sbin"
LIMPET=${LIMPET:-$ROOT/target/release/limpet}
[ -x "$LIMPET" ] || (cd "$ROOT" && cargo build --release --quiet --bin limpet)
ROUNDS=${ROUNDS:-3}
# Whole seconds (s_time -time); load.sh's wrk form ("5s") is taken too.
DURATION=${DURATION:-5}
DURATION=${DURATION%s}
CLIENTS=${CLIENTS:-2}
VARIANTS=${VARIANTS:-"haproxy nginx limpet"}
CERTS=${CERTS:-"ecdsa rsa"}
MODES=${MODES:-"new reuse"}
export RUST_LOG=${RUST_LOG:-warn}
PROXY_CPU=0
LOAD_CPU=1
BACKEND_PORTS=(19301 19302 19303)
LIMPET_PORT=19310
HAPROXY_PORT=19311
NGINX_PORT=19312
LIMPET_PLAIN_PORT=19313
HAPROXY_PLAIN_PORT=19314

DIR=$(mktemp -d /tmp/limpet-tls-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    return 1
}

stop() {
    local pid=$1 kept=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

# --- certificates and configurations --------------------------------------------

mkdir -p "$DIR/backends/logs" "$DIR/nginx-lb/logs"
backends_nginx_conf "$DIR/backends" 4096 "${BACKEND_PORTS[@]}" >"$DIR/backends/nginx.conf"

# Each proxy as bench/load.sh configures it (bench/lib.sh), with an https
# listener for each certificate (and, for HAProxy and limpet, a plain one).
for cert in ecdsa rsa; do
    make_cert "$DIR" "$cert" "$cert"
    {
        printf '[listen]\nhttp = ["127.0.0.1:%s"]\nhttps = ["127.0.0.1:%s"]\n\n' \
            "$LIMPET_PLAIN_PORT" "$LIMPET_PORT"
        printf '[tls]\ncerts = [ { cert = "%s", key = "%s" } ]\n' "$DIR/$cert.pem" "$DIR/$cert.key"
        limpet_upstream_toml cookie "${BACKEND_PORTS[@]}"
    } >"$DIR/limpet-$cert.toml"
    "$LIMPET" check --config "$DIR/limpet-$cert.toml" >/dev/null
    haproxy_conf "127.0.0.1:$HAPROXY_PORT ssl crt $DIR/$cert.haproxy.pem ssl-min-ver TLSv1.3
    bind 127.0.0.1:$HAPROXY_PLAIN_PORT" 4000 "${BACKEND_PORTS[@]}" >"$DIR/haproxy-$cert.cfg"
    nginx_lb_conf "$DIR/nginx-lb" "127.0.0.1:$NGINX_PORT ssl" 4096 "$DIR/$cert.pem" "$DIR/$cert.key" \
        "${BACKEND_PORTS[@]}" >"$DIR/nginx-$cert.conf"
done

taskset -c $LOAD_CPU nginx -p "$DIR/backends" -c "$DIR/backends/nginx.conf" &
PIDS+=($!)
for p in "${BACKEND_PORTS[@]}"; do wait_port "$p"; done

# Starts proxy $1 with certificate $2 on CPU 0, under the command in WRAP
# (e.g. valgrind) if set; sets PROXY_PID and PORT.
WRAP=()
start_proxy() {
    local name=$1 cert=$2
    case $name in
    haproxy)
        PORT=$HAPROXY_PORT
        taskset -c $PROXY_CPU "${WRAP[@]}" haproxy -db -f "$DIR/haproxy-$cert.cfg" 2>"$DIR/haproxy.log" &
        ;;
    nginx)
        PORT=$NGINX_PORT
        taskset -c $PROXY_CPU "${WRAP[@]}" nginx -p "$DIR/nginx-lb" -c "$DIR/nginx-$cert.conf" 2>"$DIR/nginx.log" &
        ;;
    limpet | base)
        PORT=$LIMPET_PORT
        local binary=$LIMPET
        [ "$name" = base ] && binary=${LIMPET_BASE:?LIMPET_BASE names the base binary}
        taskset -c $PROXY_CPU "${WRAP[@]}" "$binary" run --config "$DIR/limpet-$cert.toml" 2>"$DIR/limpet.log" &
        ;;
    *)
        echo "unknown variant $name" >&2
        exit 2
        ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PORT"
}

CLK_TCK=$(getconf CLK_TCK)

# The affinity cookie the proxy on $1 ($2: http or https) sets, sent back by
# the fixed-work clients as a returning client would (nginx: none, ip_hash).
fetch_cookie() {
    curl -sk -D - -o /dev/null "${2:-https}://127.0.0.1:$1/" | cookie_pair
}

# CLIENTS s_time processes on CPU 1 for DURATION seconds; prints
# "CONNECTIONS RESUMED" (s_time prints `r` for each resumed connection).
s_time() {
    local mode=$1 i total=0 reused=0 n clients=()
    for i in $(seq "$CLIENTS"); do
        taskset -c $LOAD_CPU openssl s_time -connect "127.0.0.1:$PORT" -"$mode" \
            -time "$DURATION" -www / >"$DIR/s_time.$i" 2>&1 &
        clients+=($!)
    done
    for i in "${clients[@]}"; do wait "$i" || true; done
    for i in $(seq "$CLIENTS"); do
        n=$(awk '/connections in .* real seconds/ { print $1 }' "$DIR/s_time.$i" | tail -1)
        total=$((total + ${n:-0}))
        reused=$((reused + $(grep -E '^[r*]+$' "$DIR/s_time.$i" | tr -cd 'r' | wc -c)))
    done
    echo "$total $reused"
}

load() {
    printf '| proxy | cert | mode | handshakes/s | CPU µs/handshake | user / sys µs | resumed | round |\n'
    printf '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n'
    local round cert mode name
    for round in $(seq "$ROUNDS"); do
        for cert in $CERTS; do
            for name in $VARIANTS; do
                start_proxy "$name" "$cert"
                for mode in $MODES; do
                    DURATION=1 s_time "$mode" >/dev/null
                    local c0 c1 t0 t1 out
                    c0=$(proc_cpu "$PROXY_PID")
                    t0=$(date +%s%N)
                    out=$(s_time "$mode")
                    t1=$(date +%s%N)
                    c1=$(proc_cpu "$PROXY_PID")
                    python3 - "$name" "$cert" "$mode" "$round" "$c0" "$c1" "$t0" "$t1" "$out" "$CLK_TCK" <<'EOF'
import sys
name, cert, mode, rnd, c0, c1, t0, t1, out, hz = sys.argv[1:]
u0, s0 = map(int, c0.split()); u1, s1 = map(int, c1.split())
conns, reused = map(int, out.split())
wall = (int(t1) - int(t0)) / 1e9
per = lambda ticks: ticks / int(hz) * 1e6 / max(conns, 1)
print(f"| {name} | {cert} | {mode} | {conns / wall:.0f} | {per(u1 - u0 + s1 - s0):.0f} | "
      f"{per(u1 - u0):.0f} / {per(s1 - s0):.0f} | {reused}/{conns} | {rnd} |")
EOF
                done
                stop "$PROXY_PID"
            done
        done
    done
}

# Instructions per full handshake, per resumed one (each with its request)
# and per TLS keep-alive request, in the proxy's process (user space, libraries
# included), for each certificate. Under valgrind, ring and OpenSSL see the CPU
# valgrind emulates (see the header).
callgrind() {
    local n=${1:-300} cert name mode count out total
    for cert in $CERTS; do
        for name in $VARIANTS; do
            WRAP=(valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.$name.$cert.out")
            start_proxy "$name" "$cert"
            WRAP=()
            local cookie
            cookie=$(fetch_cookie "$PORT")
            python3 "$HERE/tls_requests.py" --port "$PORT" --n 20 --mode new >/dev/null
            python3 "$HERE/tls_requests.py" --port "$PORT" --n 20 --mode resume >/dev/null
            for mode in new resume keepalive; do
                count=$n
                [ $mode = keepalive ] && count=$((n * 10))
                # keepalive: counters zeroed once its connections are open.
                callgrind_control -z "$PROXY_PID" >/dev/null 2>&1
                python3 "$HERE/tls_requests.py" --port "$PORT" --n $count --mode $mode \
                    --cookie "$cookie" \
                    --opened "callgrind_control -z $PROXY_PID >/dev/null 2>&1" >/dev/null
                callgrind_control -d "$PROXY_PID" >/dev/null 2>&1
                sleep 0.5
                out=$(ls -t "$DIR"/cg.$name.$cert.out.* | head -1)
                total=$(callgrind_annotate "$out" 2>/dev/null |
                    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
                printf '%s %s %s: %s instructions for %d: %d per %s\n' "$name" "$cert" "$mode" \
                    "$total" "$count" $((total / count)) \
                    "$([ $mode = keepalive ] && echo request || echo connection)"
                if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP/callgrind.$name.$cert.$mode.out"; fi
            done
            stop "$PROXY_PID"
        done
    done
}

# System calls per keep-alive request (plain and TLS, N requests on 4
# connections) and per new TLS connection (full and resumed, N/10
# connections), strace -c attached to the proxy after a warm-up.
syscalls() {
    local n=${1:-5000} name what pid port count cookie
    for name in limpet haproxy; do
        start_proxy "$name" ecdsa
        pid=$PROXY_PID
        for what in plain tls new resume; do
            local client=(python3 "$HERE/tls_requests.py" --mode "$what")
            count=$((n / 10))
            case $what in
            plain)
                client=(python3 "$HERE/requests.py")
                count=$n
                ;;
            tls) client=(python3 "$HERE/tls_requests.py" --mode keepalive) count=$n ;;
            esac
            case $name/$what in
            limpet/plain) port=$LIMPET_PLAIN_PORT ;;
            haproxy/plain) port=$HAPROXY_PLAIN_PORT ;;
            limpet/*) port=$LIMPET_PORT ;;
            haproxy/*) port=$HAPROXY_PORT ;;
            esac
            cookie=$(fetch_cookie "$port" "$([ $what = plain ] && echo http || echo https)")
            client+=(--port "$port" --cookie "$cookie")
            "${client[@]}" --n 50 >/dev/null
            strace -c -f -p "$pid" -o "$DIR/strace.out" 2>/dev/null &
            local st=$!
            sleep 1
            "${client[@]}" --n "$count" >/dev/null
            kill -INT "$st"
            wait "$st" 2>/dev/null || true
            echo "$name $what: system calls per $([ "$count" = "$n" ] && echo request || echo connection) ($count)"
            awk -v n="$count" '$NF != "syscall" && $NF != "total" && $4 ~ /^[0-9]+$/ && $4 / n >= 0.05 {
                    printf "  %-14s %6.2f", $NF, $4 / n; if ($5 ~ /^[0-9]+$/) printf " (%.2f errors)", $5 / n; print "" }
                $NF == "total" { printf "  %-14s %6.2f\n", "total", $4 / n }' "$DIR/strace.out"
        done
        stop "$pid"
    done
}

# RSS per idle TLS keep-alive connection, each proxy with the ECDSA certificate.
idle() {
    local n=${1:-2000} name
    printf '| proxy | idle TLS connections | failures | RSS before | RSS after | bytes per connection |\n'
    printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
    for name in $VARIANTS; do
        start_proxy "$name" ecdsa
        local json
        json=$(taskset -c $LOAD_CPU python3 "$HERE/idle_conns.py" --tls --port "$PORT" \
            --pid "$PROXY_PID" --n "$n" | sed -n 's/^IDLE_JSON //p')
        python3 - "$name" "$json" <<'EOF'
import json, sys
r = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {r['connections']} | {r['failures']} | {r['rss_before_kb']} KiB | "
      f"{r['rss_after_kb']} KiB | {r['per_conn_bytes']:,} |")
EOF
        stop "$PROXY_PID"
    done
}

case $WHAT in
load) load ;;
idle) idle "${2:-2000}" ;;
callgrind) callgrind "${2:-300}" ;;
syscalls) syscalls "${2:-5000}" ;;
*)
    echo "usage: bench/tls.sh [load | callgrind [N] | syscalls [N] | idle [N]]" >&2
    exit 2
    ;;
esac
