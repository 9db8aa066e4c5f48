# Pieces the benchmark scripts share (sourced by load.sh, tls.sh and
# callgrind.sh): the nginx that plays the three backends, HAProxy and nginx
# configured as load balancers the way every comparison here configures them
# (cookie stickiness, nginx ip_hash, keep-alive to the backends), limpet's
# upstream of the three backends, certificates, reading the affinity cookie
# out of a response head, and a process's CPU time from /proc. Each function prints what it makes or writes
# it under the directory it is given; ports come as arguments.

# A self-signed certificate for localhost and 127.0.0.1 in $1: $2.pem, $2.key
# and $2.haproxy.pem (certificate and key in one file, as HAProxy wants);
# $3 is ecdsa (P-256) or rsa (2048).
make_cert() {
    local dir=$1 name=$2 key
    case $3 in
    ecdsa) key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) key=(-newkey rsa:2048) ;;
    esac
    openssl req -x509 "${key[@]}" -nodes -days 7 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$dir/$name.key" -out "$dir/$name.pem" 2>/dev/null
    cat "$dir/$name.pem" "$dir/$name.key" >"$dir/$name.haproxy.pem"
}

# The top of an nginx.conf: one worker in the foreground, its pid and error
# log in $1, $2 worker connections.
nginx_main_conf() {
    local dir=$1 conns=$2
    cat <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $((conns + 4000));
events { worker_connections $conns; }
EOF
}

# nginx.conf for the backends: one worker in $1 (its pid and error log there),
# $2 worker connections, answering "ok\n" on every port after that.
backends_nginx_conf() {
    local dir=$1 conns=$2 port
    shift 2
    nginx_main_conf "$dir" "$conns"
    cat <<EOF
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {
EOF
    for port in "$@"; do echo "        listen 127.0.0.1:$port reuseport;"; done
    cat <<EOF
        location / { return 200 "ok\n"; }
    }
}
EOF
}

# haproxy.cfg: one thread, `bind $1` (more bind lines may follow in it),
# maxconn $2, cookie insert over the backends on ports $3 $4 $5.
haproxy_conf() {
    local bind=$1 maxconn=$2
    cat <<EOF
global
    nbthread 1
    maxconn $maxconn
    # The hard descriptor limit here is 20000, below the 2 x maxconn HAProxy
    # asks for at the idle scenario's size.
    no strict-limits
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
frontend fe
    bind $bind
    default_backend be
backend be
    balance roundrobin
    cookie SERVERID insert indirect nocache
    server app1 127.0.0.1:$3 cookie app1 check inter 2s
    server app2 127.0.0.1:$4 cookie app2 check inter 2s
    server app3 127.0.0.1:$5 cookie app3 check inter 2s
EOF
}

# nginx.conf for nginx as the load balancer: one worker in $1, `listen $2`,
# $3 worker connections, TLS 1.3 with certificate $4 and key $5 when $4 is
# not empty, ip_hash over the backends on ports $6 $7 $8.
nginx_lb_conf() {
    local dir=$1 listen=$2 conns=$3 ssl=""
    if [ -n "$4" ]; then
        ssl="ssl_certificate $4; ssl_certificate_key $5; ssl_protocols TLSv1.3;"
    fi
    nginx_main_conf "$dir" "$conns"
    cat <<EOF
http {
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    upstream be {
        ip_hash;
        server 127.0.0.1:$6;
        server 127.0.0.1:$7;
        server 127.0.0.1:$8;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen $listen;
        $ssl
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# limpet's runtime and its upstream `app` (affinity $1) of the backends on
# ports $2 $3 $4, each the replica of the one before: the TOML after [listen]
# (and [tls]).
limpet_upstream_toml() {
    cat <<EOF

[runtime]
worker_threads = 1

[upstream.app]
affinity = "$1"

[upstream.app.cookie]
secret = "bench-secret-bench-secret-bench-secret"

[[upstream.app.backend]]
name = "app1"
addr = "127.0.0.1:$2"
replica = "app2"

[[upstream.app.backend]]
name = "app2"
addr = "127.0.0.1:$3"
replica = "app3"

[[upstream.app.backend]]
name = "app3"
addr = "127.0.0.1:$4"
replica = "app1"
EOF
}

# The `name=value` of the first Set-Cookie in a response head on stdin
# (`curl -D -`); nothing when there is none.
cookie_pair() {
    awk 'tolower($1) == "set-cookie:" { sub(/\r$/, ""); split($2, a, ";"); print a[1]; exit }'
}

# "USER SYS": CPU clock ticks used so far by process $1 (all its threads) and its
# descendants: live children summed, reaped ones counted in cutime/cstime.
proc_cpu() {
    local pid=$1 stat child cu cs
    local -a f
    stat=$(<"/proc/$pid/stat")
    # Fields after "pid (comm) ": state is [0], utime [11], stime [12], cutime [13], cstime [14].
    read -r -a f <<<"${stat##*) }"
    local u=$((f[11] + f[13])) s=$((f[12] + f[14]))
    for child in $(ps -o pid= --ppid "$pid"); do
        read -r cu cs <<<"$(proc_cpu "$child" 2>/dev/null || echo "0 0")"
        u=$((u + cu))
        s=$((s + cs))
    done
    echo "$u $s"
}
