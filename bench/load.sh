#!/usr/bin/env bash
# limpet against HAProxy and nginx on this machine: keep-alive load through each
# proxy (sticky cookie sent back), over plain HTTP and over TLS 1.3, then N idle
# keep-alive connections per proxy. Every load row carries the proxy's CPU time
# per request (user + system, from /proc/PID/stat, over the measured wrk window),
# steadier on this shared machine than req/s (though not independent of load: it
# rises when the proxy's core is shared and each wake-up serves fewer requests,
# so compare rows of the same run).
#
#   bench/load.sh [ROUNDS]
#
# Environment (all optional):
#   ROUNDS=3          rounds; each round runs every variant once, order rotated
#   DURATION=10s      wrk -d per measured run (a 2 s warm-up precedes each)
#   CONNS=50          wrk -c (keep-alive connections)
#   IDLE_CONNS=10000  connections held open in the idle scenario (0 skips it)
#   VARIANTS="..."    subset of: direct haproxy nginx limpet-cookie limpet-cookie-warn
#                     limpet-cookie-nocolor limpet-iphash limpet-iphash-warn
#                     (a limpet variant ending in -wN runs N worker threads,
#                     e.g. limpet-cookie-warn-w2; 1 otherwise)
#                     (and base-cookie, base-cookie-warn: the LIMPET_BASE binary;
#                     bare: bench/bare-proxy, hyper with none of limpet's logic;
#                     relay: bench/relay/relay.c, a TCP relay with no HTTP at
#                     all, the kernel's floor: built with cc, plain keep-alive
#                     only)
#                     and the TLS variants haproxy-tls nginx-tls limpet-tls
#                     limpet-tls-warn (base-tls, base-tls-warn with LIMPET_BASE):
#                     TLS 1.3 terminated by the proxy with one ECDSA P-256
#                     certificate (made with openssl in the temporary directory),
#                     HTTP/1.1 keep-alive from wrk over https, plain HTTP to the
#                     backends; not in the default lists, nor in the paced
#                     scenario (its client speaks plain HTTP). The TLS
#                     comparison, with the plain rows in the same rounds:
#                       IDLE_CONNS=0 VARIANTS="haproxy-tls limpet-tls limpet-tls-warn
#                         haproxy limpet-cookie-warn" bench/load.sh
#   IDLE_VARIANTS="haproxy nginx limpet-cookie bare" (and base-cookie with LIMPET_BASE;
#                     the TLS variants too: idle connections over TLS 1.3)
#   LOAD=keepalive    what the measured runs send:
#                       keepalive  wrk, CONNS keep-alive HTTP/1.1 connections
#                       close      wrk with `Connection: close`: a new connection
#                                  per request (for the TLS variants a handshake
#                                  per request, resumed when the server offers
#                                  it: wrk's OpenSSL keeps the session, as
#                                  `openssl s_server -www` counts cache hits)
#                       h2         h2load -c H2_CONNS -m H2_STREAMS: HTTP/2 over
#                                  TLS (ALPN) for the TLS variants, h2c (prior
#                                  knowledge) for the plain ones; HAProxy's TLS
#                                  bind offers h2, nginx listens with `http2`
#                     CPU per request is then CPU per connection (close) or per
#                     HTTP/2 request (h2). h2load reports no percentiles: p50 is
#                     its mean request time, p99 its maximum.
#   H2_CONNS=20 H2_STREAMS=10
#   CPUS=split        split: the proxy alone on CPU 0, the rest on CPU 1;
#                     shared: everything on both CPUs, wrk with 2 threads (the
#                     several-workers check: CPUS=shared VARIANTS="haproxy
#                     limpet-cookie-warn-w1 limpet-cookie-warn-w2")
#   LIMPET=path       limpet binary (default: cargo build --release, target/release/limpet)
#   LIMPET_BASE=path  another limpet build (e.g. before an optimisation) measured in
#                     the same rounds as base-cookie and base-cookie-warn
#   LATENCY_RATE=0    > 0: also measure latency and CPU per request at this
#                     fixed request rate (req/s, below every proxy's capacity:
#                     CPU per request at equal load) with bench/paced, CONNS
#                     connections, DURATION long, ROUNDS rounds: p99 compared at
#                     equal load rather than at saturation
#   LATENCY_VARIANTS="haproxy limpet-cookie limpet-cookie-warn"
#   OUT=file          also copy the result lines (JSON) there
#   PORT_BASE=18080   every port is PORT_BASE + n (backends +1..+3, proxies +10..+17)
#
# Each proxy runs alone on CPU 0 (taskset -c 0); wrk, the idle client and the
# backends (one nginx worker serving three ports with a fixed 3-byte body) share
# CPU 1. Everything listens on 127.0.0.1:18081-18097 (PORT_BASE moves them).
# Every process started here is stopped by PID on exit; temporary files live
# in a mktemp -d directory.
#
# CPU per request: utime + stime of the proxy's process (all its threads) and of
# any child processes (live ones summed, reaped ones through cutime/cstime),
# read from /proc just before the measured wrk starts and just after it exits,
# divided by the requests wrk completed. The warm-up is not counted; the
# measured window includes wrk's connection set-up (CONNS TLS handshakes for the
# TLS variants, a fixed cost that a longer DURATION dilutes). /proc counts in
# clock ticks (10 ms): 0.3% of a 3 s run at full load, 0.1% of a 10 s one.
set -euo pipefail

ROUNDS=${1:-${ROUNDS:-3}}
ROUNDS_PACED=$ROUNDS
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
IDLE_CONNS=${IDLE_CONNS:-10000}
LOAD=${LOAD:-keepalive}
H2_CONNS=${H2_CONNS:-20}
H2_STREAMS=${H2_STREAMS:-10}
case $LOAD in keepalive | close | h2) ;; *)
    echo "LOAD must be keepalive, close or h2, not $LOAD" >&2
    exit 2
    ;;
esac
VARIANTS=${VARIANTS:-"direct haproxy nginx limpet-cookie limpet-cookie-warn limpet-cookie-nocolor limpet-iphash limpet-iphash-warn${LIMPET_BASE:+ base-cookie base-cookie-warn} bare"}
IDLE_VARIANTS=${IDLE_VARIANTS:-"haproxy nginx limpet-cookie${LIMPET_BASE:+ base-cookie} bare"}

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# CPUS=split (default): the proxy on CPU 0, everything else on CPU 1.
# CPUS=shared: every process may run on both CPUs and wrk runs 2 threads: the
# several-workers sanity check (limpet-*-w2 variants against -w1 ones).
CPUS=${CPUS:-split}
case $CPUS in
split) PROXY_CPU=0 LOAD_CPU=1 WRK_THREADS=1 ;;
shared) PROXY_CPU=0,1 LOAD_CPU=0,1 WRK_THREADS=2 ;;
*)
    echo "CPUS must be split or shared, not $CPUS" >&2
    exit 2
    ;;
esac

# PORT_BASE moves every port (two people benchmarking on one machine).
PORT_BASE=${PORT_BASE:-18080}
BACKEND_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)))
HAPROXY_PORT=$((PORT_BASE + 10))
NGINX_PORT=$((PORT_BASE + 11))
LIMPET_COOKIE_PORT=$((PORT_BASE + 12))
LIMPET_IPHASH_PORT=$((PORT_BASE + 13))
BARE_PORT=$((PORT_BASE + 14))
HAPROXY_TLS_PORT=$((PORT_BASE + 15))
NGINX_TLS_PORT=$((PORT_BASE + 16))
LIMPET_TLS_PORT=$((PORT_BASE + 17))
RELAY_PORT=$((PORT_BASE + 18))

need() {
    local missing=()
    local tools=(haproxy nginx wrk)
    if [ "$LOAD" = h2 ]; then tools+=(h2load); fi
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        apt-get update && apt-get install -y haproxy nginx wrk nghttp2-client
    fi
    for tool in taskset curl python3 openssl ps; do
        command -v "$tool" >/dev/null 2>&1 || { echo "load.sh needs $tool" >&2; exit 1; }
    done
}
need
export PATH="$PATH:/usr/sbin"

# 10,000 idle connections need as many descriptors in the client and the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

DIR=$(mktemp -d /tmp/limpet-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RESULTS="$DIR/results.jsonl"
: >"$RESULTS"

if [ -z "${LIMPET:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin limpet)
    LIMPET="$ROOT/target/release/limpet"
fi
BARE="$HERE/bare-proxy/target/release/bare-proxy"
PACED="$HERE/paced/target/release/paced"
LATENCY_RATE=${LATENCY_RATE:-0}
LATENCY_VARIANTS=${LATENCY_VARIANTS:-"haproxy limpet-cookie limpet-cookie-warn"}
if [ "$LATENCY_RATE" -gt 0 ]; then (cd "$HERE/paced" && cargo build --release --quiet); fi
case " $VARIANTS $IDLE_VARIANTS " in
*" bare "*) (cd "$HERE/bare-proxy" && cargo build --release --quiet) ;;
esac
RELAY="$DIR/relay"
case " $VARIANTS $LATENCY_VARIANTS " in
*" relay "*) cc -O2 -o "$RELAY" "$HERE/relay/relay.c" ;;
esac

# http, or https for the TLS variants (set by start_proxy).
SCHEME=http

# curl's flag for HTTP/2 prior knowledge on plain ports when LOAD=h2 (nginx's
# `listen ... http2` port speaks nothing else).
h2c_flag() {
    if [ "$LOAD" = h2 ] && [ "$1" = http ]; then echo --http2-prior-knowledge; fi
}

# Waits for an answer on $1 ($2: http or https; $3: proxy, or backend: HTTP/1.1
# whatever LOAD is).
wait_port() {
    local port=$1 scheme=${2:-http} role=${3:-proxy} h2c=""
    if [ "$role" = proxy ]; then h2c=$(h2c_flag "$scheme"); fi
    for _ in $(seq 100); do
        if curl -sk $h2c -o /dev/null "$scheme://127.0.0.1:$port/"; then
            return 0
        fi
        sleep 0.05
    done
    echo "nothing answers on 127.0.0.1:$port" >&2
    return 1
}

stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local kept=()
    for p in "${PIDS[@]}"; do
        [ "$p" = "$pid" ] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# --- configurations -----------------------------------------------------------

mkdir -p "$DIR/backends/logs" "$DIR/nginx-lb/logs" "$DIR/nginx-lb-tls/logs" "$DIR/tls"
# One ECDSA P-256 certificate for every TLS variant.
make_cert "$DIR/tls" cert ecdsa
backends_nginx_conf "$DIR/backends" 16000 "${BACKEND_PORTS[@]}" >"$DIR/backends/nginx.conf"

haproxy_conf "127.0.0.1:$HAPROXY_PORT" 12000 "${BACKEND_PORTS[@]}" >"$DIR/haproxy.cfg"
haproxy_conf "127.0.0.1:$HAPROXY_TLS_PORT ssl crt $DIR/tls/cert.haproxy.pem ssl-min-ver TLSv1.3 alpn h2,http/1.1" \
    12000 "${BACKEND_PORTS[@]}" >"$DIR/haproxy-tls.cfg"

# nginx speaks HTTP/2 on a port only when told, and then h2c only.
H2_LISTEN=""
if [ "$LOAD" = h2 ]; then H2_LISTEN=" http2"; fi
nginx_lb_conf "$DIR/nginx-lb" "127.0.0.1:$NGINX_PORT$H2_LISTEN" 16000 "" "" \
    "${BACKEND_PORTS[@]}" >"$DIR/nginx-lb/nginx.conf"
nginx_lb_conf "$DIR/nginx-lb-tls" "127.0.0.1:$NGINX_TLS_PORT ssl$H2_LISTEN" 16000 \
    "$DIR/tls/cert.pem" "$DIR/tls/cert.key" "${BACKEND_PORTS[@]}" >"$DIR/nginx-lb-tls/nginx.conf"

limpet_config() {
    local port=$1 affinity=$2 tls=${3:-}
    if [ -n "$tls" ]; then
        cat <<EOF
[listen]
https = ["127.0.0.1:$port"]

[tls]
certs = [ { cert = "$DIR/tls/cert.pem", key = "$DIR/tls/cert.key" } ]
EOF
    else
        cat <<EOF
[listen]
http = ["127.0.0.1:$port"]
EOF
    fi
    printf '\n[limits]\nmax_connections = 15000\n'
    limpet_upstream_toml "$affinity" "${BACKEND_PORTS[@]}"
}
limpet_config $LIMPET_COOKIE_PORT cookie >"$DIR/limpet-cookie.toml"
limpet_config $LIMPET_IPHASH_PORT ip-hash >"$DIR/limpet-iphash.toml"
limpet_config $LIMPET_TLS_PORT cookie tls >"$DIR/limpet-tls.toml"
for config in cookie iphash tls; do
    "$LIMPET" check --config "$DIR/limpet-$config.toml" >/dev/null
done

# --- processes ----------------------------------------------------------------

taskset -c $LOAD_CPU nginx -p "$DIR/backends" -c "$DIR/backends/nginx.conf" &
PIDS+=($!)
for p in "${BACKEND_PORTS[@]}"; do wait_port "$p" http backend; done

# The configuration file for limpet-$1 with worker_threads = $2.
limpet_workers() {
    local config=$1 workers=$2
    if [ "$workers" = 1 ]; then
        echo "$DIR/limpet-$config.toml"
        return
    fi
    sed "s/^worker_threads = 1$/worker_threads = $workers/" "$DIR/limpet-$config.toml" \
        >"$DIR/limpet-$config-w$workers.toml"
    echo "$DIR/limpet-$config-w$workers.toml"
}

# Starts a variant's proxy on CPU 0; sets PROXY_PID, PORT and SCHEME (PROXY_PID
# empty for direct).
start_proxy() {
    local name=$1
    PROXY_PID=""
    SCHEME=http
    case $name in *-tls | *-tls-*) SCHEME=https ;; esac
    case $name in
    direct)
        PORT=${BACKEND_PORTS[0]}
        return 0
        ;;
    haproxy)
        PORT=$HAPROXY_PORT
        taskset -c $PROXY_CPU haproxy -db -f "$DIR/haproxy.cfg" 2>"$DIR/haproxy.log" &
        ;;
    haproxy-tls)
        PORT=$HAPROXY_TLS_PORT
        taskset -c $PROXY_CPU haproxy -db -f "$DIR/haproxy-tls.cfg" 2>"$DIR/haproxy.log" &
        ;;
    nginx)
        PORT=$NGINX_PORT
        taskset -c $PROXY_CPU nginx -p "$DIR/nginx-lb" -c "$DIR/nginx-lb/nginx.conf" &
        ;;
    nginx-tls)
        PORT=$NGINX_TLS_PORT
        taskset -c $PROXY_CPU nginx -p "$DIR/nginx-lb-tls" -c "$DIR/nginx-lb-tls/nginx.conf" &
        ;;
    bare)
        PORT=$BARE_PORT
        taskset -c $PROXY_CPU "$BARE" "127.0.0.1:$PORT" "${BACKEND_PORTS[@]/#/127.0.0.1:}" &
        ;;
    relay)
        PORT=$RELAY_PORT
        taskset -c $PROXY_CPU "$RELAY" "$PORT" "${BACKEND_PORTS[@]}" &
        ;;
    limpet-* | base-*)
        # limpet-AFFINITY[-warn|-nocolor], base-AFFINITY[-warn] (the LIMPET_BASE binary);
        # AFFINITY tls is cookie affinity behind a TLS listener.
        local bin=$LIMPET config=cookie log="" color="" workers=1
        case $name in base-*) bin=${LIMPET_BASE:?base-* variants need LIMPET_BASE} ;; esac
        case $name in *iphash*) config=iphash ;; *-tls | *-tls-*) config=tls ;; esac
        case $name in *-warn | *-warn-w?) log=warn ;; *-nocolor) color=1 ;; esac
        case $name in *-w[0-9]) workers=${name##*-w} ;; esac
        case $config in
        cookie) PORT=$LIMPET_COOKIE_PORT ;;
        iphash) PORT=$LIMPET_IPHASH_PORT ;;
        tls) PORT=$LIMPET_TLS_PORT ;;
        esac
        # RUST_LOG unset is limpet's default (info, access log on); the log goes
        # to a file as it would to journald or a container log. NO_COLOR=1 turns
        # off the ANSI colours tracing-subscriber writes even to a file.
        env -u RUST_LOG -u NO_COLOR ${log:+RUST_LOG=$log} ${color:+NO_COLOR=1} \
            taskset -c $PROXY_CPU "$bin" run --config "$(limpet_workers "$config" "$workers")" 2>"$DIR/limpet.log" &
        ;;
    *)
        echo "unknown variant $name" >&2
        exit 2
        ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$PORT" "$SCHEME"
}

# The affinity cookie a first request gets (empty for ip-hash and direct).
fetch_cookie() {
    curl -sk $(h2c_flag "$SCHEME") -D - -o /dev/null "$SCHEME://127.0.0.1:$1/" | cookie_pair
}

stop_proxy() {
    if [ -n "$PROXY_PID" ]; then stop "$PROXY_PID"; fi
    rm -f "$DIR/limpet.log"
}

vmhwm() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

CLK_TCK=$(getconf CLK_TCK)

# What a TLS client negotiates with the proxy on $1: protocol, cipher, key exchange.
tls_session() {
    openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null |
        awk -F', ' '/^New, / { proto = $2; sub(/^Cipher is /, "", $3); cipher = $3 }
            /^Server Temp Key:/ { sub(/^Server Temp Key: /, "", $1); group = $1 }
            END { print proto, cipher, group }'
}

# Load on $2 for $1 (a duration such as 5s) as LOAD says, on the load CPU; the
# rest of the arguments are extra request header options (-H ...). Prints a
# WRK_JSON line with what bench/report.py reads.
generate() {
    local duration=$1 url=$2
    shift 2
    case $LOAD in
    keepalive)
        taskset -c $LOAD_CPU wrk -t"$WRK_THREADS" -c"$CONNS" -d"$duration" --latency \
            -s "$HERE/wrk-summary.lua" "$@" "$url"
        ;;
    close)
        taskset -c $LOAD_CPU wrk -t"$WRK_THREADS" -c"$CONNS" -d"$duration" --latency \
            -s "$HERE/wrk-summary.lua" -H "Connection: close" "$@" "$url"
        ;;
    h2)
        local out
        out=$(taskset -c $LOAD_CPU h2load -c"$H2_CONNS" -m"$H2_STREAMS" -D"${duration%s}" "$@" "$url")
        python3 "$HERE/h2load_json.py" <<<"$out"
        ;;
    esac
}

run_load() {
    local name=$1 round=$2
    start_proxy "$name"
    local cookie
    cookie=$(fetch_cookie "$PORT")
    local header=()
    if [ -n "$cookie" ]; then header=(-H "Cookie: $cookie"); fi
    local url="$SCHEME://127.0.0.1:$PORT/" tls=""
    if [ "$SCHEME" = https ]; then tls=$(tls_session "$PORT"); fi
    generate 2s "$url" "${header[@]}" >/dev/null
    # CPU is read just around the measured run: the warm-up and start-up are not in it.
    local out cpu0="" cpu1="" t0 t1
    if [ -n "$PROXY_PID" ]; then cpu0=$(proc_cpu "$PROXY_PID"); fi
    t0=$(date +%s%N)
    out=$(generate "$DURATION" "$url" "${header[@]}")
    t1=$(date +%s%N)
    if [ -n "$PROXY_PID" ]; then cpu1=$(proc_cpu "$PROXY_PID"); fi
    local json hwm=null cpu=null
    json=$(sed -n 's/^WRK_JSON //p' <<<"$out")
    if [ -n "$PROXY_PID" ]; then
        hwm=$(vmhwm "$PROXY_PID")
        local u0 s0 u1 s1
        read -r u0 s0 <<<"$cpu0"
        read -r u1 s1 <<<"$cpu1"
        cpu=$(printf '{"user_ticks":%d,"sys_ticks":%d,"hz":%d,"wall_us":%d}' \
            $((u1 - u0)) $((s1 - s0)) "$CLK_TCK" $(((t1 - t0) / 1000)))
    fi
    stop_proxy
    printf '{"kind":"load","name":"%s","round":%d,"cookie":"%s","tls":"%s","hwm_kb":%s,"cpu":%s,"wrk":%s}\n' \
        "$name" "$round" "${cookie:+yes}" "$tls" "$hwm" "$cpu" "$json" >>"$RESULTS"
    python3 -c '
import json, sys
r = json.loads(sys.argv[1]); w = r["wrk"]; c = r["cpu"]
line = "  %-20s round %d: %8.0f req/s  p50 %5d us  p99 %6d us  errors %d" % (
    r["name"], r["round"], w["requests"] / (w["duration_us"] / 1e6), w["p50_us"], w["p99_us"],
    w["status"] + w["connect"] + w["read"] + w["write"] + w["timeout"])
if c and w["requests"]:
    per = 1e6 / c["hz"] / w["requests"]
    line += "  cpu %5.2f us/req (user %.2f sys %.2f), %3.0f%% of a core" % (
        (c["user_ticks"] + c["sys_ticks"]) * per, c["user_ticks"] * per, c["sys_ticks"] * per,
        100 * (c["user_ticks"] + c["sys_ticks"]) / c["hz"] / (c["wall_us"] / 1e6))
if r["tls"]:
    line += "  [" + r["tls"] + "]"
print(line)' "$(tail -n1 "$RESULTS")" >&2
}

run_idle() {
    local name=$1
    start_proxy "$name"
    local cookie tls=()
    cookie=$(fetch_cookie "$PORT")
    if [ "$SCHEME" = https ]; then tls=(--tls); fi
    local line
    line=$(taskset -c $LOAD_CPU python3 "$HERE/idle_conns.py" --port "$PORT" --pid "$PROXY_PID" \
        --n "$IDLE_CONNS" --cookie "$cookie" "${tls[@]}" | sed -n 's/^IDLE_JSON //p')
    stop_proxy
    printf '{"kind":"idle","name":"%s",%s\n' "$name" "${line#\{}" >>"$RESULTS"
    echo "  $name idle: $line" >&2
}

run_paced() {
    local name=$1 round=$2
    case $name in *-tls | *-tls-*)
        echo "  $name paced: skipped (bench/paced speaks plain HTTP only)" >&2
        return 0
        ;;
    esac
    start_proxy "$name"
    local cookie
    cookie=$(fetch_cookie "$PORT")
    local header=()
    if [ -n "$cookie" ]; then header=(-H "Cookie: $cookie"); fi
    taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s "${header[@]}" "http://127.0.0.1:$PORT/" >/dev/null
    local line cpu0 cpu1 u0 s0 u1 s1
    cpu0=$(proc_cpu "$PROXY_PID")
    line=$(taskset -c $LOAD_CPU "$PACED" "127.0.0.1:$PORT" "$LATENCY_RATE" "${DURATION%s}" "$CONNS" "$cookie" |
        sed -n 's/^PACED_JSON //p')
    cpu1=$(proc_cpu "$PROXY_PID")
    stop_proxy
    # CPU per request at the same request rate for every proxy: none is
    # saturated, so none gains from serving many requests per wake-up.
    read -r u0 s0 <<<"$cpu0"
    read -r u1 s1 <<<"$cpu1"
    line=$(printf '%s,"cpu":{"user_ticks":%d,"sys_ticks":%d,"hz":%d}}' \
        "${line%\}}" $((u1 - u0)) $((s1 - s0)) "$CLK_TCK")
    printf '{"kind":"paced","name":"%s","round":%d,%s\n' "$name" "$round" "${line#\{}" >>"$RESULTS"
    echo "  $name paced round $round: $line" >&2
}

echo "limpet bench: $ROUNDS rounds of $DURATION, $CONNS connections; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
read -r -a variants <<<"$VARIANTS"
# VARIANTS="" runs only the idle scenario.
[ ${#variants[@]} -gt 0 ] || ROUNDS=0
for round in $(seq "$ROUNDS"); do
    # Rotate the order so that no variant always runs first or last.
    n=${#variants[@]}
    shift_by=$(((round - 1) % n))
    for i in $(seq 0 $((n - 1))); do
        run_load "${variants[$(((i + shift_by) % n))]}" "$round"
    done
done

if [ "$LATENCY_RATE" -gt 0 ]; then
    read -r -a paced_variants <<<"$LATENCY_VARIANTS"
    for round in $(seq "$ROUNDS_PACED"); do
        n=${#paced_variants[@]}
        for i in $(seq 0 $((n - 1))); do
            run_paced "${paced_variants[$(((i + round - 1) % n))]}" "$round"
        done
    done
fi

if [ "$IDLE_CONNS" -gt 0 ]; then
    for name in $IDLE_VARIANTS; do
        run_idle "$name"
    done
fi

echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ -n "${OUT:-}" ]; then cp "$RESULTS" "$OUT"; fi
python3 "$HERE/report.py" "$RESULTS"
