#!/usr/bin/env python3
"""Exactly N GET requests over TLS, each checked to be a 200: a fixed amount of
work for counting instructions (callgrind) or system calls (strace) per TLS
handshake or per TLS request, where time-bounded load generators would not do.

    tls_requests.py --port 19310 --n 1000 --mode new       # a full handshake per request
    tls_requests.py --port 19310 --n 1000 --mode resume    # a new connection per request, resumed
    tls_requests.py --port 19310 --n 5000 --mode keepalive [--conns 4] [--cookie 'limpet=...']
        [--opened 'CMD']   # CMD runs once the connections are open, before the requests

TLS 1.3 only (--tls12 for 1.2), no certificate check (bench certificates are
self-signed). In `resume` mode every connection offers the session (ticket)
of the connection before it, and the script fails unless the server resumed
all but the first: a server without resumption cannot pass for one with it.
"""

import argparse
import socket
import ssl
import subprocess
import sys

# bench/requests.py (this script's directory comes first on sys.path).
from requests import read_response, round_robin


def context(tls12: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def connect(ctx, port: int, session=None):
    raw = socket.create_connection(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)


def one_per_connection(ctx, args, request: bytes) -> tuple[int, int]:
    """A new connection per request; returns (not 200, resumed)."""
    bad = resumed = 0
    session = None
    for _ in range(args.n):
        s = connect(ctx, args.port, session if args.mode == "resume" else None)
        s.sendall(request)
        if read_response(s, bytearray()) != 200:
            bad += 1
        resumed += s.session_reused
        # TLS 1.3 tickets arrive after the handshake: read with the response.
        session = s.session
        s.close()
    return bad, resumed


def keepalive(ctx, args, request: bytes) -> int:
    socks = [connect(ctx, args.port) for _ in range(args.conns)]
    if args.opened:
        # The handshakes are done: what follows counts requests only.
        subprocess.run(args.opened, shell=True, check=True)
    return round_robin(socks, args.n, request)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--mode", choices=["new", "resume", "keepalive"], default="keepalive")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--cookie", default="")
    ap.add_argument("--tls12", action="store_true")
    ap.add_argument("--opened", default="", help="keepalive: run this once connected")
    args = ap.parse_args()
    ctx = context(args.tls12)
    cookie = f"Cookie: {args.cookie}\r\n" if args.cookie else ""
    close = "" if args.mode == "keepalive" else "Connection: close\r\n"
    request = f"GET / HTTP/1.1\r\nHost: localhost\r\n{cookie}{close}\r\n".encode()
    if args.mode == "keepalive":
        bad = keepalive(ctx, args, request)
        print(f"{args.n} requests over {args.conns} TLS connections, {bad} not 200")
        sys.exit(1 if bad else 0)
    bad, resumed = one_per_connection(ctx, args, request)
    print(f"{args.n} TLS connections ({args.mode}), {resumed} resumed, {bad} not 200")
    if args.mode == "resume" and resumed < args.n - 1:
        print("the server did not resume every session offered", file=sys.stderr)
        sys.exit(1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
