"""What the benchmark reads from /proc: a process tree's CPU time and memory, TCP counters.

CPU is utime + stime from ``/proc/PID/stat`` (clock ticks, 10 ms here; scheduler stats are
off on this kernel, so nothing finer is available), summed over the tree so a proxy that
forks workers or a ``bash -c`` wrapper is counted whole.  Memory is ``VmRSS`` summed over
the tree; the peak is ``VmHWM`` after resetting it through ``/proc/PID/clear_refs`` (``5``
resets the high-water mark, Documentation/filesystems/proc.rst).
"""

from __future__ import annotations

import os
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts")


def _stat_fields(pid: int) -> list[bytes]:
    """Fields after ``(comm)``: comm may hold spaces or parentheses, so cut at the last ')'."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return raw[raw.rfind(b")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent = int(_stat_fields(int(name))[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(parent, []).append(int(name))
    return out


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children = _children()
    found: list[int] = []
    todo = [root]
    while todo and len(found) < 10_000:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return ticks / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all CPUs have spent not idle since boot (``/proc/stat``, first line)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kib(pids: list[int]) -> int:
    return sum(_status_kib(pid, "VmRSS:") for pid in pids)


def hwm_kib(pids: list[int]) -> int:
    return sum(_status_kib(pid, "VmHWM:") for pid in pids)


def reset_hwm(pids: list[int]) -> bool:
    """Reset the peak-RSS mark of every process; False if any could not be reset."""
    ok = bool(pids)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def tcp_counters() -> dict[str, int]:
    """Machine-wide TcpExt counters: a dropped SYN shows in ListenOverflows/ListenDrops."""
    out: dict[str, int] = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        names, values = names_line.split(), values_line.split()
        if names and names[0] == "TcpExt:":
            for name, value in zip(names[1:], values[1:], strict=False):
                if name in TCP_COUNTERS:
                    out[name] = int(value)
    return out


class RssSampler(threading.Thread):
    """Samples a tree's RSS every ``every`` seconds until stopped or ``limit`` seconds pass."""

    def __init__(self, root: int, every: float, limit: float, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.limit, self.delay = root, every, limit, delay
        self.samples: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        if self._halt.wait(self.delay):
            return
        end = time.monotonic() + self.limit
        pids = tree(self.root)
        while not self._halt.is_set() and time.monotonic() < end:
            self.samples.append(rss_kib(pids))
            self._halt.wait(self.every)

    def stop(self) -> list[int]:
        self._halt.set()
        self.join(timeout=5)
        return self.samples
