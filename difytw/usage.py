"""The usage line: one structured log event per finished stream, for accounting (issue 7).

When a proxied stream ends, however it ends, ``log_usage`` emits one ``twisted.logger``
event in the ``difytw.usage`` namespace saying who ran what (the ``user`` sent upstream,
the endpoint, the run's ids), how it ended (terminal event, workflow status, error code,
the relay's end, whether it ended before its terminal event and whether a stop call went
out), and what it cost: the tokens and price of ``message_end.metadata.usage``
(dify-contract.md 2.6), or a workflow's ``total_tokens``, plus bytes and seconds.

Only facts from the stream and the exchange are logged: no header, so never the app key.
``usage_fields`` builds the event's fields and is pure.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from difytw.streamwatch import IDS, StreamWatch

usage_log = Logger(namespace="difytw.usage")

USAGE_FORMAT = (
    "{endpoint} user={user} task={task_id} ended={end} terminal={terminal} "
    "tokens={total_tokens} price={total_price} {currency} bytes={bytes} duration={duration}s"
)
# message_end.metadata.usage keys worth keeping (dify-contract.md 2.6); the unit prices are
# derivable from these and left out to keep the line short.
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_price", "currency", "latency")


def usage_fields(
    watch: StreamWatch,
    *,
    user: str | None,
    endpoint: str,
    end: str,
    relayed: int,
    duration: float,
    stop_call: bool,
) -> dict[str, Any]:
    """The fields of one usage event; every key is always present (None when unknown)."""
    usage = watch.usage or {}
    fields: dict[str, Any] = {
        "user": user,
        "endpoint": endpoint,
        **{key: watch.ids.get(key) for key in IDS},
        "terminal": watch.terminal,
        "workflow_status": watch.workflow_status,
        "error_code": None if watch.error is None else watch.error.get("code"),
        "total_tokens": watch.total_tokens,
        **{key: usage.get(key) for key in USAGE_KEYS},
        "bytes": relayed,
        "duration": round(duration, 4),
        "end": end,
        # The run did not reach its terminal event on this stream: its tokens are partial.
        "stopped_early": watch.terminal is None,
        "stop_call": stop_call,
        "watch_broken": watch.broken,  # why side-parsing gave up, if it did: fields are partial
    }
    return fields


def log_usage(
    watch: StreamWatch,
    *,
    user: str | None,
    endpoint: str,
    end: str,
    relayed: int,
    duration: float,
    stop_call: bool,
) -> None:
    """Emit the usage line of one finished stream (see the module docstring)."""
    usage_log.info(
        USAGE_FORMAT,
        **usage_fields(
            watch,
            user=user,
            endpoint=endpoint,
            end=end,
            relayed=relayed,
            duration=duration,
            stop_call=stop_call,
        ),
    )
