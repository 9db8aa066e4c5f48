#!/usr/bin/env python3
"""Opens N keep-alive connections through a proxy, makes one request on each (so
every connection has served a request and sits idle in keep-alive), holds them
all open, and reports the proxy's RSS before and after as one JSON line.

    idle_conns.py --port 18092 --pid 1234 [--n 10000] [--cookie 'limpet=...'] [--tls]

--tls: over TLS 1.3 (no certificate check), for the memory a TLS connection
keeps while idle.

RSS is VmRSS from /proc/PID/status; the per-connection figure is
(after - before) / connections actually open.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import time


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def open_one(port: int, request: bytes, conns: list, failures: list, tls=None):
    try:
        tls_args = {"ssl": tls, "server_hostname": "localhost"} if tls else {}
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, **tls_args), timeout=10
        )
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await asyncio.wait_for(reader.readexactly(length), timeout=10)
        if not head.startswith(b"HTTP/1.1 200"):
            failures.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        conns.append((reader, writer))
    except Exception as e:  # noqa: BLE001 - counted and reported
        failures.append(repr(e))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--cookie", default="")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args()
    tls = tls_context() if args.tls else None

    cookie = f"Cookie: {args.cookie}\r\n" if args.cookie else ""
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n{cookie}\r\n"
    ).encode()

    time.sleep(args.settle)
    before = rss_kb(args.pid)
    fds_before = fd_count(args.pid)
    conns: list = []
    failures: list = []
    started = time.monotonic()
    # Bounded concurrency: the clients arrive a few at a time, as real ones do,
    # so the proxy's upstream pool stays small and the figure is about the
    # client-side connections.
    sem = asyncio.Semaphore(args.concurrency)

    async def bounded():
        async with sem:
            await open_one(args.port, request, conns, failures, tls)

    await asyncio.gather(*(bounded() for _ in range(args.n)))
    opened = time.monotonic() - started
    await asyncio.sleep(args.settle)
    after = rss_kb(args.pid)
    hwm = rss_kb(args.pid, "VmHWM")
    fds_after = fd_count(args.pid)
    n = len(conns)
    print(
        "IDLE_JSON "
        + json.dumps(
            {
                "connections": n,
                "failures": len(failures),
                "first_failure": failures[0] if failures else None,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "hwm_kb": hwm,
                "per_conn_bytes": round((after - before) * 1024 / n) if n else None,
                "fds_before": fds_before,
                "fds_after": fds_after,
                "open_seconds": round(opened, 2),
            }
        ),
        flush=True,
    )
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
