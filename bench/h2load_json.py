"""Turns h2load's report (stdin) into the WRK_JSON line bench/load.sh records.

h2load prints no percentiles: p50_us is its mean time per request and p99_us
its maximum. Requests done without a 2xx/3xx count as `status` errors, those
that errored as `read` errors, those that timed out as `timeout`.
"""

import json
import re
import sys

UNITS_US = {"us": 1, "ms": 1e3, "s": 1e6}


def micros(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return int(float(number) * UNITS_US[unit])


def main():
    report = sys.stdin.read()
    finished = re.search(r"finished in ([\d.]+(?:us|ms|s)),", report)
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        report,
    )
    timing = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", report)
    traffic = re.search(r"traffic: .*?\((\d+)\) total", report)
    if not (finished and requests and timing):
        sys.exit("h2load_json: cannot read h2load's report:\n" + report)
    _total, _started, done, succeeded, _failed, errored, timeout = map(int, requests.groups())
    summary = {
        "requests": done,
        "duration_us": micros(finished.group(1)),
        "bytes": int(traffic.group(1)) if traffic else 0,
        "p50_us": micros(timing.group(3)),
        "p90_us": 0,
        "p99_us": micros(timing.group(2)),
        "p999_us": 0,
        "max_us": micros(timing.group(2)),
        "status": done - succeeded,
        "connect": 0,
        "read": errored,
        "write": 0,
        "timeout": timeout,
    }
    print("WRK_JSON " + json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
