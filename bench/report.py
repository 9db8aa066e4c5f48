#!/usr/bin/env python3
"""Turns the JSON lines bench/load.sh collects into the markdown tables of
bench/RESULTS.md: medians over rounds, ratios to HAProxy and to direct.

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
}


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
        rows[name] = {
            "rounds": len(recs),
            "rps": statistics.median(rps),
            "rps_all": rps,
            "p50": statistics.median(r["wrk"]["p50_us"] for r in recs),
            "p99": statistics.median(r["wrk"]["p99_us"] for r in recs),
            "errors": sum(errors),
            "hwm": [r["hwm_kb"] for r in recs if r.get("hwm_kb")],
        }

    ha = rows.get("haproxy", {}).get("rps")
    direct = rows.get("direct", {}).get("rps")
    print(
        "| run | req/s (median) | p50 | p99 | errors (all rounds) | peak RSS | x HAProxy | x direct | req/s per round |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in ORDER + sorted(set(rows) - set(ORDER)):
        if name not in rows:
            continue
        r = rows[name]
        hwm = f"{statistics.median(r['hwm']) / 1024:.1f} MiB" if r["hwm"] else "-"
        x_ha = f"{r['rps'] / ha:.2f}" if ha else "-"
        x_direct = f"{r['rps'] / direct:.2f}" if direct else "-"
        per_round = " / ".join(f"{v:.0f}" for v in r["rps_all"])
        print(
            f"| {name} | {r['rps']:.0f} | {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | "
            f"{r['errors']} | {hwm} | {x_ha} | {x_direct} | {per_round} |"
        )
    print()
    for name in ORDER:
        if name in rows:
            print(f"- `{name}`: {DESCRIPTION[name]}")

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
        print("| proxy | rate | sent | errors | p50 | p99 | p99.9 | max | p99 per round |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
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
                + " |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
