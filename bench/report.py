"""The benchmark's one table: rows = metrics, columns = direct / the proxy, ratio, goal.

Pure: takes the result dicts ``run.py`` collected and renders markdown.  The goals are the
ones issue 3 item 10 sets for one pinned core (the best peer figures seen on this machine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Extract = Callable[[dict[str, Any]], float | None]
# A step where other processes used more than this share of a CPU gets a dagger: the
# machine is shared (other engineers' tests), and such a number is suspect.
NOISY_PCT = 25.0


@dataclass(frozen=True)
class Row:
    label: str
    step: str
    extract: Extract
    ratio: bool = False  # show proxy / direct
    goal: str = ""


def row(
    label: str, step: str, *keys: str, factor: float = 1.0, ratio: bool = False, goal: str = ""
) -> Row:
    """A row showing ``steps[step][keys...] * factor`` of each column."""

    def extract(column: dict[str, Any]) -> float | None:
        value = dig(column, "steps", step, *keys)
        return None if value is None else float(value) * factor

    return Row(label, step, extract, ratio, goal)


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
        load = f"{_streams(config)} x {1000 / config['interval_ms']:g} ev/s"
        lat = ("result", "latency_ms")
        out.append(row(f"added latency p50 ms, {load}", step, *lat, "p50", ratio=True))
        goal = "< best peer (HPM 70)" if step == "latency_1000" else ""
        out.append(row(f"added latency p99 ms, {load}", step, *lat, "p99", ratio=True, goal=goal))
        if step == "latency_1000":
            out += [
                row(f"TTFB p99 ms, {load}", step, "result", "ttfb_ms", "p99", ratio=True),
                Row(
                    f"listen overflows + SYN retransmits, {load} (machine-wide)",
                    step,
                    _syn_trouble(step),
                    goal="0",
                ),
                row(f"proxy CPU µs per event, {load}", step, "proxy_cpu_us_per_event"),
                row(f"client side CPU0 busy %, {load}", step, "cpu0_busy", factor=100),
            ]
    config = scenarios.get("flat_out")
    if config is not None:
        load = f"{_streams(config)} x {config['n']} events, no spacing"
        out += [
            row(f"events/s flat out, {load}", "flat_out", "result", "events_per_s", ratio=True),
            row(
                "proxy CPU µs per event, flat out",
                "flat_out",
                "proxy_cpu_us_per_event",
                goal="≤ 2.5",
            ),
            row("proxy CPU busy %, flat out", "flat_out", "proxy_cpu_busy", factor=100),
            row("client side CPU0 busy %, flat out", "flat_out", "cpu0_busy", factor=100),
        ]
    config = scenarios.get("idle")
    if config is not None:
        out += [
            row("idle streams open", "idle", "streams_open"),
            row(
                f"proxy RSS KiB per idle open stream, {_streams(config)}",
                "idle",
                "kib_per_stream",
                goal="≤ 9",
            ),
        ]
    config = scenarios.get("upload")
    if config is not None:
        size = f"{config['size_bytes'] / 1048576:g} MiB"
        out += [
            row(
                f"upload MiB/s, {size} (median of {config['repeats']})",
                "upload",
                "result",
                "mib_per_s_median",
                ratio=True,
                goal="≥ 200",
            ),
            row(
                f"proxy peak RSS growth MiB, {size} upload",
                "upload",
                "rss_peak_growth_kib",
                factor=1 / 1024,
                goal="≤ 8",
            ),
            row("proxy peak RSS MiB", "upload", "rss_peak_kib", factor=1 / 1024),
        ]
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
    for line in rows(scenarios):
        cells = [_cell(line, c) for c in columns]
        ratio = ""
        if line.ratio and direct is not None and proxy is not None:
            base, value = line.extract(direct), line.extract(proxy)
            if base and value is not None:
                ratio = f"x{value / base:.2f}"
        lines.append(f"| {line.label} | " + " | ".join(cells) + f" | {ratio} | {line.goal} |")
    lines.append(
        "| errors (step: count) | " + " | ".join(error_cell(c) for c in columns) + " | | 0 |"
    )
    background = [
        max(
            (dig(s, "background_cpu_pct") or 0.0 for s in c.get("steps", {}).values()), default=None
        )
        for c in columns
    ]
    lines.append(
        "| background CPU % (other processes, max over steps) | "
        + " | ".join(number(b) for b in background)
        + f" | | < {NOISY_PCT:g} |"
    )
    return "\n".join(lines)


def _cell(line: Row, column: dict[str, Any]) -> str:
    value = line.extract(column)
    text = number(value)
    noise = dig(column, "steps", line.step, "background_cpu_pct")
    if value is not None and noise is not None and noise > NOISY_PCT:
        text += " †"
    return text
