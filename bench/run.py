"""Benchmark ``twist difyproxy`` against talking to the upstream directly; stdlib only.

    python bench/run.py [--quick] [--columns direct,difyproxy] [--proxy-cmd TEMPLATE]

Starts the fake Dify (``upstream.py``) and, per column, the proxy in front of it, drives
both with ``loadgen.py``, samples the proxy's process tree from /proc, prints one markdown
table on stdout (progress on stderr) and writes everything to ``bench/results/*.json``.
The proxy is pinned to CPU 1; this script, the upstream and the load generator to CPU 0,
so the proxy's numbers are one core's.  Loopback only; every loop is bounded; every run
stops by itself (``--quick`` < 1 min, the full plan < 10 min).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import procfs
import report
from processes import KEY, LOOPBACK, Child, free_port, run_loadgen, wait_port

HERE = Path(__file__).resolve().parent
PROXY_CPU, CLIENT_CPU = 1, 0
DEFAULT_PROXY_CMD = (
    f"{shlex.quote(sys.executable)} -m twisted difyproxy --upstream {{upstream}} "
    "--listen tcp:{port}:interface=127.0.0.1:backlog=1024"
)

# Scenario configs are loadgen configs; every one carries its own deadline.
FULL: dict[str, dict[str, Any]] = {
    "latency_1": {"concurrency": 1, "n": 200, "interval_ms": 20, "deadline_ms": 30_000},
    "latency_100": {"concurrency": 100, "n": 100, "interval_ms": 20, "ramp_ms": 100},
    "latency_1000": {"concurrency": 1000, "n": 50, "interval_ms": 50, "ramp_ms": 1000},
    "flat_out": {"concurrency": 50, "n": 2000, "interval_ms": 0},
    "upload": {"mode": "upload", "size_bytes": 20 * 1024 * 1024, "repeats": 3},
    "idle": {
        "concurrency": 2000,
        "n": 1,
        "interval_ms": 0,
        "hold_ms": 20_000,
        "ramp_ms": 2000,
        "open_timeout_ms": 15_000,
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "latency_1": dict(FULL["latency_1"], n=50),
    "latency_100": dict(FULL["latency_100"], n=50),
    "latency_1000": dict(FULL["latency_1000"], n=20),
    "flat_out": dict(FULL["flat_out"], concurrency=20, n=1000),
    "upload": dict(FULL["upload"], repeats=1),
    "idle": dict(FULL["idle"], hold_ms=4000, open_timeout_ms=8000),
}
# For the smoke test: the same machinery, a few streams, seconds in all.
SMOKE: dict[str, dict[str, Any]] = {
    "latency_1": dict(FULL["latency_1"], n=5, interval_ms=10),
    "latency_100": dict(FULL["latency_100"], concurrency=5, n=5, interval_ms=10),
    "latency_1000": dict(FULL["latency_1000"], concurrency=10, n=3, interval_ms=10, ramp_ms=10),
    "flat_out": dict(FULL["flat_out"], concurrency=3, n=100),
    "upload": dict(FULL["upload"], size_bytes=256 * 1024, repeats=1),
    "idle": dict(FULL["idle"], concurrency=10, hold_ms=1000, ramp_ms=10, open_timeout_ms=3000),
}
# "restart" gives the memory scenarios a fresh proxy process, as a user's deployment has.
PLAN = [
    "latency_1",
    "latency_100",
    "latency_1000",
    "flat_out",
    "restart",
    "upload",
    "restart",
    "idle",
]
WARMUP = [
    {"concurrency": 10, "n": 20, "interval_ms": 0, "deadline_ms": 15_000},
    {"concurrency": 1, "n": 10, "interval_ms": 5, "deadline_ms": 15_000},
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Column:
    """One column of the table: ``direct`` (no proxy) or a proxy started from a template."""

    def __init__(self, name: str, template: str | None, upstream_port: int, logs: Path) -> None:
        self.name = name
        self.template = template
        self.upstream_port = upstream_port
        self.logs = logs
        self.port = upstream_port if template is None else free_port()
        self.child: Child | None = None
        self.prefix = "" if template is None else "/dify"
        # direct: the client holds the key itself; through the proxy it never sees it.
        self.headers = {"Authorization": f"Bearer {KEY}"} if template is None else {}

    def start(self) -> str | None:
        """Start the proxy and wait until it accepts; the error text, or None."""
        if self.template is None:
            return None
        command = self.template.format(
            upstream=f"http://{LOOPBACK}:{self.upstream_port}", port=self.port
        )
        self.child = Child(self.name, ["bash", "-c", command], self.logs, {"DIFY_API_KEY": KEY})
        self.child.pin(PROXY_CPU)
        if not wait_port(self.port, self.child, 30):
            tail = self.child.log_tail()
            self.stop()
            return f"not accepting on {self.port} within 30 s: {tail}"
        return None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def root(self) -> int:
        assert self.child is not None
        return self.child.pid

    def pids(self) -> list[int]:
        return procfs.tree(self.child.pid) if self.child is not None else []

    def config(self, scenario: dict[str, Any]) -> dict[str, Any]:
        upload = scenario.get("mode") == "upload"
        path = self.prefix + ("/v1/files/upload" if upload else "/v1/chat-messages")
        return dict(scenario, port=self.port, path=path, headers=self.headers)

    def warm_up(self) -> str | None:
        for scenario in WARMUP:
            result = run_loadgen(self.config(scenario))
            if result.get("error_count"):
                return f"warm-up failed: {json.dumps(result.get('error_samples'))[:800]}"
        return None


def measure(column: Column, step: str, scenario: dict[str, Any], upstream: Child) -> dict[str, Any]:
    """Run one scenario through ``column`` and what /proc says about it."""
    pids = column.pids()
    up_pids = procfs.tree(upstream.pid)
    out: dict[str, Any] = {"config": scenario}
    out["rss_before_kib"] = procfs.rss_kib(pids) if pids else None
    cpu0, up_cpu0, tcp0 = (
        procfs.cpu_seconds(pids),
        procfs.cpu_seconds(up_pids),
        procfs.tcp_counters(),
    )
    # What the rest of the machine did meanwhile: busy time minus ours (this runner, its
    # waited-for loadgen children, the upstream and the proxy).
    machine0, self0 = procfs.machine_busy_seconds(), time.process_time()
    children0 = _children_cpu()
    started = time.monotonic()
    config = column.config(scenario)
    if step == "idle":
        # Sample only while every stream is open and silent: from all_open until the first
        # stream's hold ends (it opened ramp_ms before the last one).
        window = max(0.5, (scenario["hold_ms"] - scenario.get("ramp_ms", 0)) / 1000 - 1.0)
        sampler = procfs.RssSampler(column.root(), 0.25, window, delay=0.25) if pids else None

        def all_open(event: dict[str, Any]) -> None:
            out["streams_open"] = event.get("streams_with_event", 0)
            if sampler is not None:
                sampler.start()

        result = run_loadgen(config, on_open=all_open)
        samples = sampler.stop() if sampler is not None and sampler.ident else []
        if samples and out.get("streams_open"):
            out["rss_during_kib"] = sorted(samples)[len(samples) // 2]
            out["rss_samples"] = len(samples)
            growth = out["rss_during_kib"] - out["rss_before_kib"]
            out["kib_per_stream"] = growth / out["streams_open"]
    elif step == "upload" and pids:
        hwm_ok = procfs.reset_hwm(pids)
        sampler = procfs.RssSampler(column.root(), 0.02, 120)
        sampler.start()
        result = run_loadgen(config)
        sampled = max(sampler.stop(), default=0)
        peak = max(sampled, procfs.hwm_kib(column.pids()) if hwm_ok else 0)
        out["rss_peak_kib"] = peak
        out["rss_peak_growth_kib"] = peak - out["rss_before_kib"]
        out["rss_peak_source"] = (
            "VmHWM reset before the upload" if hwm_ok else "sampled every 20 ms"
        )
    else:
        result = run_loadgen(config)
    wall = time.monotonic() - started
    tcp1 = procfs.tcp_counters()
    out["wall_s"] = round(wall, 3)
    out["tcp_delta"] = {k: tcp1.get(k, 0) - tcp0.get(k, 0) for k in tcp1}
    out["upstream_cpu_s"] = round(procfs.cpu_seconds(procfs.tree(upstream.pid)) - up_cpu0, 3)
    # Shares of one CPU over the scenario's wall time (loadgen start-up included, which
    # only matters for the smoke plan's sub-second runs).
    busy_s = wall
    out["cpu0_busy"] = (out["upstream_cpu_s"] + result.get("loadgen_cpu_s", 0)) / busy_s
    ours = out["upstream_cpu_s"] + time.process_time() - self0 + _children_cpu() - children0
    if pids:
        ours += procfs.cpu_seconds(column.pids()) - cpu0
    background = max(0.0, procfs.machine_busy_seconds() - machine0 - ours)
    out["background_cpu_pct"] = round(background / wall * 100, 1)
    if pids:
        out["proxy_cpu_s"] = round(procfs.cpu_seconds(column.pids()) - cpu0, 3)
        out["proxy_cpu_busy"] = out["proxy_cpu_s"] / busy_s
        if result.get("events_received"):
            out["proxy_cpu_us_per_event"] = out["proxy_cpu_s"] / result["events_received"] * 1e6
    out["result"] = result
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def select(steps: list[str]) -> list[str]:
    """PLAN narrowed to ``steps``, keeping a restart only where a chosen step follows it."""
    plan: list[str] = []
    for step in PLAN:
        if step == "restart":
            if plan and plan[-1] != "restart":
                plan.append(step)
        elif step in steps:
            plan.append(step)
    return plan[:-1] if plan and plan[-1] == "restart" else plan


def run_column(
    column: Column, scenarios: dict[str, dict[str, Any]], plan: list[str], upstream: Child
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": column.name, "command": column.template, "steps": {}}
    log(f"{column.name}: starting" + (f" on {column.port}" if column.template else ""))
    error = column.start() or column.warm_up()
    try:
        for step in plan:
            if error is not None:
                break
            if step == "restart":
                if column.template is not None:
                    column.stop()
                    error = column.start() or column.warm_up()
                continue
            if column.child is not None and not column.child.alive():
                error = f"proxy died before {step}: {column.child.log_tail()}"
                break
            result = measure(column, step, scenarios[step], upstream)
            out["steps"][step] = result
            summary = result["result"]
            log(
                f"{column.name}: {step} errors={summary.get('error_count')} "
                f"p50={report.dig(summary, 'latency_ms', 'p50')} "
                f"p99={report.dig(summary, 'latency_ms', 'p99')} ms "
                f"ev/s={summary.get('events_per_s', 0):.0f} "
                f"cpu={result.get('proxy_cpu_us_per_event')} us/ev "
                f"KiB/stream={result.get('kib_per_stream')} "
                f"MiB/s={summary.get('mib_per_s_median')}"
            )
    finally:
        column.stop()
    if error is not None:
        out["error"] = error
        log(f"{column.name}: {error[:400]}")
    return out


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a < 1 min subset")
    size.add_argument("--smoke", action="store_true", help="a few streams: checks the machinery")
    parser.add_argument("--columns", default="direct,difyproxy", help="direct and/or the proxy")
    parser.add_argument("--proxy-name", default="difyproxy", help="the proxy column's name")
    parser.add_argument(
        "--proxy-cmd",
        default=DEFAULT_PROXY_CMD,
        help="proxy start command; {upstream} and {port} are filled in (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        default=",".join(s for s in PLAN if s != "restart"),
        help="which scenarios to run (default: all, %(default)s)",
    )
    parser.add_argument("--results", type=Path, default=HERE / "results", help="JSON + logs dir")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.columns.split(",") if n.strip()]
    unknown = set(names) - {"direct", args.proxy_name}
    if unknown:
        parser.error(f"unknown columns {sorted(unknown)}: use direct and/or {args.proxy_name}")
    scenarios = SMOKE if args.smoke else QUICK if args.quick else FULL
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    if set(chosen) - set(scenarios):
        parser.error(f"unknown steps {sorted(set(chosen) - set(scenarios))}")
    plan = select(chosen)
    scenarios = {k: v for k, v in scenarios.items() if k in plan}
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"

    nofile = raise_fd_limit()
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CPU})  # the upstream and loadgen inherit CPU 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = args.results / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    up_port = free_port()
    upstream = Child(
        "upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(up_port)], logs
    )
    columns: list[dict[str, Any]] = []
    try:
        if not wait_port(up_port, upstream, 15):
            log(f"upstream did not start: {upstream.log_tail()}")
            return 2
        log(f"upstream on {up_port}; {mode} plan; columns {', '.join(names)}")
        for name in names:
            template = None if name == "direct" else args.proxy_cmd
            column = Column(name, template, up_port, logs)
            columns.append(run_column(column, scenarios, plan, upstream))
    finally:
        upstream.stop()
    table = report.render(columns, scenarios)
    meta = {
        "timestamp": stamp,
        "mode": mode,
        "total_s": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
        "plan": plan,
        "pinning": f"proxy CPU {PROXY_CPU}, client side CPU {CLIENT_CPU}" if pinned else "none",
        "cpus": os.cpu_count(),
        "nofile": nofile,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "proxy_cmd": args.proxy_cmd,
    }
    out_path = args.results / f"{stamp}.json"
    out_path.write_text(json.dumps({"meta": meta, "columns": columns, "table": table}, indent=2))
    print(f"## difyproxy benchmark {stamp} ({mode}, {meta['total_s']} s)\n")
    print(
        "Added latency = receive time - upstream write time per event (CLOCK_MONOTONIC), ms. "
        f"Proxy pinned to CPU {PROXY_CPU}; upstream + loadgen share CPU {CLIENT_CPU}. "
        f"† = other processes used > {report.NOISY_PCT:g} % of a CPU during that step.\n"
    )
    print(table)
    for done in columns:
        if done.get("error"):
            print(f"\n- **{done['name']}**: {done['error'][:600]}")
    print(f"\nresults: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
