"""The benchmark's one table: rows = metrics, columns = direct / the proxy, ratio, goal.

Pure: takes the result dicts ``run.py`` collected and renders markdown.  The goals are the
ones issue 3 item 10 sets for one pinned core (the best peer figures seen on this machine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Extract = Callable[[dict[str, Any]], float | None]


@dataclass(frozen=True)
class Row:
    label: str
    extract: Extract
    ratio: bool = False  # show proxy / direct
    goal: str = ""


def dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return None
        obj = obj[key]
    return obj


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1000:
        return str(int(value))
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _scaled(step: str, *keys: str, factor: float = 1.0) -> Extract:
    def extract(column: dict[str, Any]) -> float | None:
        value = dig(column, "steps", step, *keys)
        return None if value is None else float(value) * factor

    return extract


def _streams(config: dict[str, Any]) -> str:
    count = config["concurrency"]
    return f"{count} stream" + ("s" if count != 1 else "")


def rows(scenarios: dict[str, dict[str, Any]]) -> list[Row]:
    """The table's rows for the scenarios that were run (labels carry their sizes)."""
    out: list[Row] = []
    for step in ("latency_1", "latency_100", "latency_1000"):
        config = scenarios.get(step)
        if config is None:
            continue
        rate = 1000 / config["interval_ms"]
        load = f"{_streams(config)} x {rate:g} ev/s"
        p99_goal = "< best peer (HPM 70)" if step == "latency_1000" else ""
        out.append(
            Row(f"added latency p50 ms, {load}", _scaled(step, "result", "latency_ms", "p50"), True)
        )
        out.append(
            Row(
                f"added latency p99 ms, {load}",
                _scaled(step, "result", "latency_ms", "p99"),
                True,
                p99_goal,
            )
        )
        if step == "latency_1000":
            out.append(Row(f"TTFB p99 ms, {load}", _scaled(step, "result", "ttfb_ms", "p99"), True))
            out.append(
                Row(
                    f"listen overflows + SYN retransmits, {load} (machine-wide)",
                    _syn_trouble(step),
                    goal="0",
                )
            )
            out.append(
                Row(f"proxy CPU µs per event, {load}", _scaled(step, "proxy_cpu_us_per_event"))
            )
            out.append(
                Row(f"client side CPU0 busy %, {load}", _scaled(step, "cpu0_busy", factor=100))
            )
    config = scenarios.get("flat_out")
    if config is not None:
        load = f"{_streams(config)} x {config['n']} events, no spacing"
        out.append(
            Row(f"events/s flat out, {load}", _scaled("flat_out", "result", "events_per_s"), True)
        )
        out.append(
            Row(
                "proxy CPU µs per event, flat out",
                _scaled("flat_out", "proxy_cpu_us_per_event"),
                goal="≤ 2.5",
            )
        )
        out.append(
            Row("proxy CPU busy %, flat out", _scaled("flat_out", "proxy_cpu_busy", factor=100))
        )
        out.append(
            Row("client side CPU0 busy %, flat out", _scaled("flat_out", "cpu0_busy", factor=100))
        )
    config = scenarios.get("idle")
    if config is not None:
        out.append(Row("idle streams open", _scaled("idle", "streams_open")))
        out.append(
            Row(
                f"proxy RSS KiB per idle open stream, {_streams(config)}",
                _scaled("idle", "kib_per_stream"),
                goal="≤ 9",
            )
        )
    config = scenarios.get("upload")
    if config is not None:
        size = f"{config['size_bytes'] / 1048576:g} MiB"
        out.append(
            Row(
                f"upload MiB/s, {size} (median of {config['repeats']})",
                _scaled("upload", "result", "mib_per_s_median"),
                True,
                "≥ 200",
            )
        )
        out.append(
            Row(
                f"proxy peak RSS growth MiB, {size} upload",
                _scaled("upload", "rss_peak_growth_kib", factor=1 / 1024),
                goal="≤ 8",
            )
        )
        out.append(Row("proxy peak RSS MiB", _scaled("upload", "rss_peak_kib", factor=1 / 1024)))
    return out


def _syn_trouble(step: str) -> Extract:
    def extract(column: dict[str, Any]) -> float | None:
        delta = dig(column, "steps", step, "tcp_delta")
        if delta is None:
            return None
        return float(delta.get("ListenOverflows", 0) + delta.get("TCPSynRetrans", 0))

    return extract


def error_cell(column: dict[str, Any]) -> str:
    if column.get("error"):
        return "FAILED"
    parts = []
    for step, result in column.get("steps", {}).items():
        count = dig(result, "result", "error_count")
        if count:
            kinds = ",".join(list(dig(result, "result", "errors") or {})[:2])
            parts.append(f"{step}: {count} ({kinds})")
    return "; ".join(parts) or "0"


def render(columns: list[dict[str, Any]], scenarios: dict[str, dict[str, Any]]) -> str:
    """Markdown: metric | each column | ratio (last column / direct) | goal."""
    names = [c["name"] for c in columns]
    direct = next((c for c in columns if c["name"] == "direct" and not c.get("error")), None)
    proxy = next((c for c in columns if c["name"] != "direct"), None)
    lines = [
        "| metric | " + " | ".join(names) + " | vs direct | goal |",
        "|---|" + "---:|" * len(names) + "---:|---|",
    ]
    for row in rows(scenarios):
        cells = [number(row.extract(c)) for c in columns]
        ratio = ""
        if row.ratio and direct is not None and proxy is not None:
            base, value = row.extract(direct), row.extract(proxy)
            if base and value is not None:
                ratio = f"x{value / base:.2f}"
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {ratio} | {row.goal} |")
    lines.append(
        "| errors (step: count) | " + " | ".join(error_cell(c) for c in columns) + " | | 0 |"
    )
    return "\n".join(lines)
