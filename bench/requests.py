#!/usr/bin/env python3
"""Sends exactly N keep-alive GET requests over C connections (round-robin, one
in flight per connection) and checks every answer is a 200: a fixed amount of
work for instruction counting (bench/callgrind.sh), where wrk's time-bounded
runs would not do.

    requests.py --port 18092 --n 5000 [--conns 4] [--cookie 'limpet=...'] [--close]

--close: one request per connection instead (`Connection: close`, the answer
read to the end of the stream, the client closing after it): the cost of a new
connection.
"""

import argparse
import socket
import sys


def read_response(sock, buf: bytearray) -> int:
    """Reads one response (Content-Length bodies) from `sock`, plain or TLS
    (bench/tls_requests.py uses it too), keeping what follows in `buf`; returns
    its status."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    buf[:] = rest[length:]
    return status


def round_robin(socks, n: int, request: bytes) -> int:
    """Sends `request` n times over `socks` in turn, one in flight per socket,
    then closes them; returns how many answers were not 200 (bench/
    tls_requests.py uses it too)."""
    bufs = [bytearray() for _ in socks]
    bad = 0
    for i in range(n):
        k = i % len(socks)
        socks[k].sendall(request)
        if read_response(socks[k], bufs[k]) != 200:
            bad += 1
    for s in socks:
        s.close()
    return bad


def close_per_request(port: int, n: int, cookie: str) -> int:
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}Connection: close\r\n\r\n"
    ).encode()
    bad = 0
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            buf = bytearray()
            if read_response(sock, buf) != 200:
                bad += 1
            # The proxy closes after its answer: read to the end of the stream.
            while sock.recv(65536):
                pass
    print(f"{n} requests, one connection each (Connection: close), {bad} not 200")
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--cookie", default="")
    ap.add_argument("--close", action="store_true")
    args = ap.parse_args()
    cookie = f"Cookie: {args.cookie}\r\n" if args.cookie else ""
    if args.close:
        sys.exit(close_per_request(args.port, args.n, cookie))
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n{cookie}\r\n".encode()
    socks = [socket.create_connection(("127.0.0.1", args.port)) for _ in range(args.conns)]
    bad = round_robin(socks, args.n, request)
    print(f"{args.n} requests, {bad} not 200")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
