"""What ``twist difyproxy``'s option values mean: sizes, durations, and the app key's source.

Parsing only (no reactor; the one I/O is reading the key file), for ``proxytap``'s options:
a value that means nothing raises ``ValueError`` (sizes, durations) or ``usage.UsageError``
(the key) with one line saying what to give instead.  The app key is never a flag value
(``ps`` would show it to every user of the machine): :func:`read_key` takes it from
``DIFY_API_KEY`` or ``--api-key-file`` and never echoes it.
"""

from __future__ import annotations

import os
import re

from twisted.python import usage

KEY_ENV = "DIFY_API_KEY"

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1048576``, ``512k``, ``100M``, ``20MiB``, ``1G``, ``5MB`` -> bytes.

    As in nginx's ``client_max_body_size``, ``k``/``m``/``g`` are binary (1024-based), and
    so are ``KiB``/``MiB``/``GiB``; ``KB``/``MB``/``GB`` are decimal (SI).
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 100M, 20MiB, 512k or bytes)")
    number, unit = int(match.group(1)), (match.group(2) or "b").lower()
    if unit == "b":
        return number
    power = "kmg".index(unit[0]) + 1
    base = 1000 if unit.endswith("b") and not unit.endswith("ib") else 1024
    return int(number * base**power)


def parse_duration(text: str) -> float:
    """``60`` or ``60s``, ``500ms``, ``5m``, ``1h`` -> seconds (must be positive)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 60s, 500ms, 5m)")
    number = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[(match.group(2) or "s").lower()]
    seconds = number * scale
    if seconds <= 0:
        raise ValueError(f"duration must be more than zero: {text!r}")
    return seconds


def read_key(path: str | None, environ: dict[str, str]) -> str:
    """The app key from ``--api-key-file`` (preferred when given) or ``DIFY_API_KEY``."""
    if path is not None:
        if not os.path.lexists(path):
            # Not echoed: a path that names nothing is often the key itself, given by
            # mistake, and this line ends up in terminals, CI logs and the journal.
            raise usage.UsageError(
                "--api-key-file: no such file (give the path of a file that holds just "
                f"the key, or export {KEY_ENV}=app-...)"
            )
        try:
            with open(path, encoding="utf-8") as handle:
                key = handle.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            # Only the reason: str() of a decode error quotes bytes of the file.
            reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else error.strerror
            raise usage.UsageError(f"--api-key-file {path}: {reason}") from None
        origin = f"--api-key-file {path}"
    elif environ.get(KEY_ENV):
        key = environ[KEY_ENV].strip()
        origin = KEY_ENV
    else:
        raise usage.UsageError(
            "difyproxy needs the Dify app key, and will not take it as a flag value "
            f"(ps shows those to everyone): export {KEY_ENV}=app-... or pass "
            "--api-key-file FILE naming a file that holds just the key."
        )
    # The key goes into a header line: no whitespace or control characters inside.
    if not key or not all(33 <= ord(c) <= 126 for c in key):
        raise usage.UsageError(
            f"the app key from {origin} is empty or holds spaces or control characters"
        )
    return key
