#!/usr/bin/env python3
"""Turns the JSON lines bench/load.sh collects into the markdown tables of
bench/RESULTS.md: medians over rounds, ratios to HAProxy and to direct.

Each load row has req/s and the proxy's CPU time per request (user + system,
microseconds; lower is better). Ratios "x HAProxy" compare a plain-HTTP row
with `haproxy` and a TLS row (`*-tls*`) with `haproxy-tls`; the TLS ratio
(limpet-tls / haproxy-tls) is printed below the table.

    report.py RESULTS.jsonl
"""

import json
import statistics
import sys

ORDER = [
    "direct",
    "haproxy",
    "nginx",
    "limpet-cookie",
    "limpet-cookie-warn",
    "limpet-cookie-nocolor",
    "limpet-iphash",
    "limpet-iphash-warn",
    "base-cookie",
    "base-cookie-warn",
    "bare",
    "haproxy-tls",
    "nginx-tls",
    "limpet-tls",
    "limpet-tls-warn",
    "base-tls",
    "base-tls-warn",
]

DESCRIPTION = {
    "direct": "wrk straight at one backend",
    "haproxy": "HAProxy, cookie insert, nbthread 1",
    "nginx": "nginx, ip_hash, 1 worker, upstream keepalive",
    "limpet-cookie": "limpet, cookie, RUST_LOG unset (info: access log on)",
    "limpet-cookie-warn": "limpet, cookie, RUST_LOG=warn",
    "limpet-cookie-nocolor": "limpet, cookie, RUST_LOG unset, NO_COLOR=1 (access log on, no ANSI colours)",
    "limpet-iphash": "limpet, ip-hash, RUST_LOG unset (info: access log on)",
    "limpet-iphash-warn": "limpet, ip-hash, RUST_LOG=warn",
    "base-cookie": "limpet before the optimisations (LIMPET_BASE), cookie, RUST_LOG unset",
    "base-cookie-warn": "limpet before the optimisations (LIMPET_BASE), cookie, RUST_LOG=warn",
    "bare": "bench/bare-proxy: limpet's stack (hyper, own pool, current-thread tokio) without limpet's logic; round-robin, no cookie",
    "haproxy-tls": "HAProxy terminating TLS 1.3 (ECDSA P-256, OpenSSL), cookie insert, nbthread 1",
    "nginx-tls": "nginx terminating TLS 1.3 (ECDSA P-256, OpenSSL), ip_hash, 1 worker",
    "limpet-tls": "limpet terminating TLS 1.3 (ECDSA P-256, rustls/ring), cookie, RUST_LOG unset",
    "limpet-tls-warn": "limpet terminating TLS 1.3 (ECDSA P-256, rustls/ring), cookie, RUST_LOG=warn",
    "base-tls": "LIMPET_BASE terminating TLS 1.3, cookie, RUST_LOG unset",
    "base-tls-warn": "LIMPET_BASE terminating TLS 1.3, cookie, RUST_LOG=warn",
}


def is_tls(name: str) -> bool:
    return name.endswith("-tls") or "-tls-" in name


def cpu_us(rec: dict):
    """(total, user, sys) CPU microseconds per request of the proxy, or None."""
    c = rec.get("cpu")
    n = rec["wrk"]["requests"]
    if not c or not n:
        return None
    per = 1e6 / c["hz"] / n
    return (
        (c["user_ticks"] + c["sys_ticks"]) * per,
        c["user_ticks"] * per,
        c["sys_ticks"] * per,
    )


def core_share(rec: dict):
    """The fraction of one core the proxy used during the measured run, or None."""
    c = rec.get("cpu")
    if not c or not c.get("wall_us"):
        return None
    return (c["user_ticks"] + c["sys_ticks"]) / c["hz"] / (c["wall_us"] / 1e6)


def fmt_us(us: float) -> str:
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} us"


def main(path: str) -> None:
    load: dict = {}
    idle: dict = {}
    paced: dict = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["kind"] == "load":
                load.setdefault(rec["name"], []).append(rec)
            elif rec["kind"] == "idle":
                idle.setdefault(rec["name"], []).append(rec)
            elif rec["kind"] == "paced":
                paced.setdefault(rec["name"], []).append(rec)

    rows = {}
    for name, recs in load.items():
        rps = [r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6) for r in recs]
        errors = [
            sum(r["wrk"][k] for k in ("status", "connect", "read", "write", "timeout"))
            for r in recs
        ]
        cpus = [cpu_us(r) for r in recs]
        cpus = [c for c in cpus if c is not None]
        shares = [core_share(r) for r in recs]
        shares = [x for x in shares if x is not None]
        rows[name] = {
            "rounds": len(recs),
            "rps": statistics.median(rps),
            "rps_all": rps,
            "cpu": statistics.median(c[0] for c in cpus) if cpus else None,
            "cpu_user": statistics.median(c[1] for c in cpus) if cpus else None,
            "cpu_sys": statistics.median(c[2] for c in cpus) if cpus else None,
            "cpu_all": [c[0] for c in cpus],
            "share": statistics.median(shares) if shares else None,
            "tls": next((r["tls"] for r in recs if r.get("tls")), ""),
            "p50": statistics.median(r["wrk"]["p50_us"] for r in recs),
            "p99": statistics.median(r["wrk"]["p99_us"] for r in recs),
            "errors": sum(errors),
            "hwm": [r["hwm_kb"] for r in recs if r.get("hwm_kb")],
        }

    direct = rows.get("direct", {}).get("rps")
    print(
        "| run | req/s (median) | CPU us/req (median) | user / sys us | core busy | p50 | p99 | "
        "errors (all rounds) | peak RSS | x HAProxy req/s | x HAProxy CPU/req | x direct | "
        "req/s per round | CPU us/req per round |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name in ORDER + sorted(set(rows) - set(ORDER)):
        if name not in rows:
            continue
        r = rows[name]
        ha = rows.get("haproxy-tls" if is_tls(name) else "haproxy", {})
        hwm = f"{statistics.median(r['hwm']) / 1024:.1f} MiB" if r["hwm"] else "-"
        x_ha = f"{r['rps'] / ha['rps']:.2f}" if ha else "-"
        x_ha_cpu = f"{r['cpu'] / ha['cpu']:.2f}" if ha and ha["cpu"] and r["cpu"] else "-"
        x_direct = f"{r['rps'] / direct:.2f}" if direct else "-"
        cpu = f"{r['cpu']:.2f}" if r["cpu"] is not None else "-"
        split = f"{r['cpu_user']:.2f} / {r['cpu_sys']:.2f}" if r["cpu"] is not None else "-"
        share = f"{100 * r['share']:.0f}%" if r["share"] is not None else "-"
        per_round = " / ".join(f"{v:.0f}" for v in r["rps_all"])
        cpu_round = " / ".join(f"{v:.2f}" for v in r["cpu_all"]) or "-"
        print(
            f"| {name} | {r['rps']:.0f} | {cpu} | {split} | {share} | {fmt_us(r['p50'])} | "
            f"{fmt_us(r['p99'])} | {r['errors']} | {hwm} | {x_ha} | {x_ha_cpu} | {x_direct} | "
            f"{per_round} | {cpu_round} |"
        )
    print()
    for name in ORDER:
        if name in rows:
            tls = f" (negotiated: {rows[name]['tls']})" if rows[name]["tls"] else ""
            print(f"- `{name}`: {DESCRIPTION[name]}{tls}")
    print(
        "- CPU us/req: user + system CPU of the proxy process (all threads, and children)"
        " over the measured run, divided by the requests wrk completed; core busy: that CPU"
        " time over the run's wall time. x HAProxy: against `haproxy`, TLS rows against"
        " `haproxy-tls`; for CPU/req lower is better."
    )

    for name in ("limpet-tls", "limpet-tls-warn", "base-tls", "base-tls-warn"):
        if name in rows and "haproxy-tls" in rows:
            r, ha = rows[name], rows["haproxy-tls"]
            cpu = (
                f", CPU per request {r['cpu']:.2f} / {ha['cpu']:.2f} us = {r['cpu'] / ha['cpu']:.2f}x"
                if r["cpu"] and ha["cpu"]
                else ""
            )
            print()
            print(
                f"TLS ratio {name} / haproxy-tls: req/s {r['rps']:.0f} / {ha['rps']:.0f} = "
                f"{r['rps'] / ha['rps']:.2f}x{cpu} (medians over {r['rounds']} / {ha['rounds']} rounds)"
            )

    if idle:
        print()
        print(
            "| proxy | idle connections | failures | RSS before | RSS after | RSS per connection | proxy fds after |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in ORDER + sorted(set(idle) - set(ORDER)):
            for r in idle.get(name, []):
                per = r["per_conn_bytes"]
                per_s = f"{per / 1024:.1f} KiB" if per is not None else "-"
                print(
                    f"| {name} | {r['connections']} | {r['failures']} | "
                    f"{r['rss_before_kb'] / 1024:.1f} MiB | {r['rss_after_kb'] / 1024:.1f} MiB | "
                    f"{per_s} | {r['fds_after']} |"
                )


    if paced:
        print()
        print("Latency at a fixed rate (bench/paced; medians over rounds, per round after the slash):")
        print()
        print("| proxy | rate | sent | errors | p50 | p99 | p99.9 | max | p99 per round | CPU us/req (user / sys) | CPU per round |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
        for name in ORDER + sorted(set(paced) - set(ORDER)):
            recs = paced.get(name, [])
            if not recs:
                continue
            med = lambda key: statistics.median(r[key] for r in recs)
            print(
                f"| {name} | {recs[0]['rate']:.0f} | {sum(r['sent'] for r in recs)} | "
                f"{sum(r['errors'] for r in recs)} | {fmt_us(med('p50_us'))} | {fmt_us(med('p99_us'))} | "
                f"{fmt_us(med('p999_us'))} | {fmt_us(med('max_us'))} | "
                + " / ".join(fmt_us(r["p99_us"]) for r in recs)
                + " | "
                + paced_cpu(recs)
                + " |"
            )


def paced_cpu(recs: list) -> str:
    """Median CPU per request at the fixed rate, and per round ("-" if not measured)."""
    per = []
    for r in recs:
        c = r.get("cpu")
        if not c or not r["sent"]:
            continue
        tick_us = 1e6 / c["hz"] / r["sent"]
        per.append((c["user_ticks"] * tick_us, c["sys_ticks"] * tick_us))
    if not per:
        return "- | -"
    total = statistics.median(u + s for u, s in per)
    user = statistics.median(u for u, _ in per)
    sys_ = statistics.median(s for _, s in per)
    rounds = " / ".join(f"{u + s:.2f}" for u, s in per)
    return f"{total:.2f} ({user:.2f} / {sys_:.2f}) | {rounds}"


if __name__ == "__main__":
    main(sys.argv[1])
