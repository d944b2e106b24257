"""Child processes of the benchmark: start, pin, wait for a port, stop whole trees, loadgen.

Every child runs in its own session so a stop reaches its whole process tree (a proxy
started through ``bash -c`` included); every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import procfs

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
KEY = "app-bench"
LOADGEN_GRACE_S = 15  # past a run's own deadline before the loadgen is killed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class Child:
    """A process in its own session, its output in ``logs/<name>.log``."""

    def __init__(
        self, name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = logs / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **(env or {})),
            start_new_session=True,
        )
        self.pid = self.process.pid

    def pin(self, cpu: int) -> None:
        """Move the process to one CPU; what it starts later inherits that."""
        if (os.cpu_count() or 1) >= 2:
            for pid in procfs.tree(self.pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, {cpu})

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, size: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the session, SIGKILL what is left after ``grace`` seconds."""
        pids = procfs.tree(self.pid) if self.alive() else []
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            if sig == signal.SIGKILL:
                for pid in pids:  # descendants that left the session
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


def wait_port(port: int, child: Child | None, timeout: float) -> bool:
    """True once ``port`` accepts a connection; False if ``child`` exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if child is not None and not child.alive():
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run_loadgen(
    config: dict[str, Any], on_open: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run ``loadgen.py`` with ``config``; its result, or an error result.  Bounded."""
    limit = config.get("deadline_ms", 60_000) / 1000 + LOADGEN_GRACE_S
    process = subprocess.Popen(
        [sys.executable, str(HERE / "loadgen.py"), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    end = time.monotonic() + limit
    result: dict[str, Any] | None = None
    while True:
        left = end - time.monotonic()
        if left <= 0:
            process.kill()
            process.wait()
            return {"error_count": 1, "errors": {"loadgen_timeout": 1}}
        try:
            line = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if line is None:
            break
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("type") == "all_open" and on_open is not None:
            on_open(message)
        elif message.get("type") == "result":
            result = message
    process.wait(timeout=10)
    if result is None:
        assert process.stderr is not None
        crash = process.stderr.read()[-800:]
        return {"error_count": 1, "errors": {"loadgen_crash": 1}, "error_samples": [crash]}
    return result
