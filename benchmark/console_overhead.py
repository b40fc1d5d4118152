"""Does an open live events page slow ingest? Throughput of `clickstream local` with and without it.

The server runs pinned to one core and the load generator to the other, as in ``clickstream
bench``; runs alternate (without, with, without, ...) so that drift on a shared machine hits both
sides alike, and the medians are compared. "With" means Debian's headless chromium has the page
open on the live events tab, polling events every 0.4 s and status and refusals every 3 s.

    .venv/bin/python benchmark/console_overhead.py --rounds 3 --seconds 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clickstream import bench, loadgen

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


_TICK = os.sysconf("SC_CLK_TCK")
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []  # before pinning


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, pending = [], [pid]
    while pending:
        p = pending.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes (a process's finished children are not counted)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return total / _TICK


def _load(port: int, scenario: bench.Scenario, seconds: float, connections: int,
          rate: float | None = None) -> loadgen.LoadResult:
    cycle = itertools.cycle([loadgen.http_request("127.0.0.1", port, scenario.path, b, scenario.headers)
                             for b in scenario.bodies])
    return loadgen.run(loadgen.run_load("127.0.0.1", port, lambda: next(cycle), seconds=seconds,
                                        connections=connections, rate=rate))


def _browser(url: str, chromium: str) -> None:
    """Helper process: open the page, say "ready", wait for a line on stdin, report what the page did."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#live-state.live")
        print("ready", flush=True)
        sys.stdin.readline()  # idle here: the page polls on its own
        polls = page.evaluate("() => performance.getEntriesByType('resource')"
                              ".filter(e => e.name.includes('/api/events')).length")
        print(json.dumps({"polls": polls, "rows": page.locator("#events tbody tr").count()}), flush=True)
        browser.close()


def _run(page_open: bool, scenario: bench.Scenario, seconds: float, connections: int, data_dir: Path,
         chromium: str, rate: float | None = None) -> dict:
    server = bench.ServerProcess(False, data_dir)
    # The collector's own process: its loader+archiver child (niced) soaks up whatever CPU is idle,
    # so its time says nothing about ingest cost.
    server_pids = [server.proc.pid]
    helper, page, browser_pids = None, {}, []
    try:
        if page_open:
            # The browser runs in its own process, free to use any core, like a developer's browser.
            helper = subprocess.Popen([sys.executable, __file__, "--browser", f"http://127.0.0.1:{server.port}/",
                                       "--chromium", chromium], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
            if _CPUS:
                os.sched_setaffinity(helper.pid, _CPUS)
            assert helper.stdout.readline().strip() == "ready"
            browser_pids = _tree(helper.pid)
        before = _cpu_seconds(server_pids), _cpu_seconds(browser_pids)
        result = _load(server.port, scenario, seconds, connections, rate)
        server_cpu = _cpu_seconds(server_pids) - before[0]
        browser_cpu = _cpu_seconds(browser_pids) - before[1]
        if helper:
            helper.stdin.write("stop\n")
            helper.stdin.flush()
            page = json.loads(helper.stdout.readline())
            helper.wait(timeout=30)
    finally:
        if helper and helper.poll() is None:
            helper.kill()
        server.stop()
    events = result.ok * scenario.events_per_request
    return {"page": page_open, "events_per_s": round(result.rps * scenario.events_per_request, 1),
            "requests_per_s": round(result.rps, 1), "p50_ms": round(result.percentile(50), 2),
            "p99_ms": round(result.percentile(99), 2), "errors": result.errors, "page_polls": page.get("polls"),
            "rows_shown": page.get("rows"), "collector_cpu_s": round(server_cpu, 2),
            "collector_cpu_ms_per_1000_events": round(server_cpu * 1e6 / max(1, events), 3),
            "browser_cpu_s": round(browser_cpu, 2) if page_open else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["batch", "single"], default="batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=None,
                        help="requests/s (open loop): a fixed load, so the server's CPU time compares directly")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--browser", metavar="URL", help=argparse.SUPPRESS)  # the helper process
    args = parser.parse_args()
    if args.browser:
        _browser(args.browser, args.chromium)
        return
    bench._pin(__import__("os").getpid(), 1)
    scenario = bench.scenarios()[args.scenario]
    runs = []
    with tempfile.TemporaryDirectory(prefix="clickstream-console-bench-") as tmp:
        for n in range(args.rounds):
            for page_open in (False, True):
                fig = _run(page_open, scenario, args.seconds, args.connections, Path(tmp) / f"{n}-{page_open}",
                           args.chromium, args.rate)
                print(json.dumps(fig), flush=True)
                runs.append(fig)
                time.sleep(1)
    without = statistics.median(r["events_per_s"] for r in runs if not r["page"])
    with_page = statistics.median(r["events_per_s"] for r in runs if r["page"])
    cost_without = statistics.median(r["collector_cpu_ms_per_1000_events"] for r in runs if not r["page"])
    cost_with = statistics.median(r["collector_cpu_ms_per_1000_events"] for r in runs if r["page"])
    print(json.dumps({"scenario": args.scenario, "median_events_per_s_without": without,
                      "median_events_per_s_with_page": with_page,
                      "with_page_vs_without": round(with_page / without, 3),
                      "median_collector_cpu_ms_per_1000_events_without": cost_without,
                      "median_collector_cpu_ms_per_1000_events_with_page": cost_with,
                      "collector_cpu_per_event_with_vs_without": round(cost_with / cost_without, 3)}))


if __name__ == "__main__":
    main()
