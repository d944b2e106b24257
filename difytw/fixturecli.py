"""``difytw-fixture``: the fixture toolbox as one argparse console script.

This module owns the command line: the subcommands and their flags, reading and writing files,
and the exit status (0 success, 1 lint found problems, 2 bad input or usage, as argparse does).
Each problem is one line on stderr naming the file and what is wrong.  The work is done by pure
modules: :mod:`difytw.fixtureshow`, :mod:`difytw.fixturelint`, :mod:`difytw.pacing` and
:mod:`difytw.har`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from difytw.fixture import Fixture, FixtureError, load
from difytw.fixturelint import index_findings, lint_file, lint_text
from difytw.fixtureshow import render
from difytw.fixturewrite import dumps
from difytw.har import DEFAULT_BASE_URL, export_har
from difytw.harimport import HarError, import_har
from difytw.pacing import retime
from difytw.transcript import TranscriptError, transcript_fixture, transcript_request

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InputError(Exception):
    """Input that is not what it claims to be; ``str()`` is the one line to print."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0): a status, not an exception
        return e.code if isinstance(e.code, int) else 2
    try:
        status: int = args.run(args)
    except InputError as e:
        print(f"difytw-fixture {args.command}: {e}", file=sys.stderr)
        return 2
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difytw-fixture", description="Review, lint, import and retime sse-fixture/1 files."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="the exchange as a timeline for human review")
    show.add_argument("file", metavar="FILE")
    show.set_defaults(run=_show)

    lint = commands.add_parser(
        "lint", help="SSE grammar, Dify contract, secrets, byte count and sha256"
    )
    lint.add_argument("paths", nargs="+", metavar="PATH", help="a fixture, or a directory")
    lint.set_defaults(run=_lint)

    sse = commands.add_parser("import-sse", help="a raw SSE transcript (curl -N) into a fixture")
    sse.add_argument("file", metavar="FILE")
    pace = sse.add_mutually_exclusive_group()
    pace.add_argument("--interval", type=_at_least(0), metavar="MS", help="gap between frames")
    pace.add_argument("--tokens-per-second", type=_above(0), metavar="N", help="pace by answer")
    sse.add_argument("--first-byte", type=_at_least(0), default=0.0, metavar="MS")
    sse.add_argument("--method", default="POST")
    sse.add_argument("--path", default="/v1/chat-messages", help="may include ?query")
    body = sse.add_mutually_exclusive_group()
    body.add_argument("--query-text", metavar="TEXT", help="the chat/completion 'query'")
    body.add_argument(
        "--json",
        type=_json_value,
        default=argparse.SUPPRESS,
        metavar="JSON",
        help="the whole request body",
    )
    sse.add_argument("--user", default="demo-user", help="the 'user' of the default body")
    sse.add_argument("--id", type=_fixture_id, help="default: the file name")
    sse.add_argument("--notes", default="")
    sse.add_argument("-o", "--output", metavar="OUT", help="default: stdout")
    sse.set_defaults(run=_import_sse)

    har_in = commands.add_parser("import-har", help="text/event-stream entries of a HAR 1.2 file")
    har_in.add_argument("file", metavar="FILE")
    har_in.add_argument("-o", "--output", required=True, metavar="DIR")
    har_in.add_argument("--prefix", type=_fixture_id, help="ids are PREFIX-N (default: the name)")
    har_in.add_argument("--force", action="store_true", help="overwrite existing fixture files")
    har_in.set_defaults(run=_import_har)

    har_out = commands.add_parser("export-har", help="fixtures into a HAR 1.2 file (+ _chunks)")
    har_out.add_argument("paths", nargs="+", metavar="PATH", help="a fixture, or a directory")
    har_out.add_argument("--base-url", default=DEFAULT_BASE_URL, help="scheme and host of URLs")
    har_out.add_argument("-o", "--output", metavar="OUT", help="default: stdout")
    har_out.set_defaults(run=_export_har)

    times = commands.add_parser("retime", help="speed up and cap the gaps, keeping bytes and order")
    times.add_argument("file", metavar="FILE")
    times.add_argument("--speed", type=_above(0), default=1.0, metavar="FACTOR", help="2 = twice")
    times.add_argument("--max-gap", type=_at_least(0), metavar="MS", help="cap on every gap")
    where = times.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="OUT", help="default: stdout")
    where.add_argument("--in-place", action="store_true", help="rewrite FILE (canonical form)")
    times.set_defaults(run=_retime)
    return parser


# -- commands -----------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(render(_load(args.file)))
    return 0


def _lint(args: argparse.Namespace) -> int:
    paths = fixture_paths(args.paths)
    findings = []
    for path in paths:
        try:
            findings += lint_file(path)
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
    findings = sorted(findings + index_findings(paths))
    for finding in findings:
        print(finding)
    print(f"{len(paths)} files, {len(findings)} problems", file=sys.stderr)
    return 1 if findings else 0


def _import_sse(args: argparse.Namespace) -> int:
    data = _read(args.file)
    try:
        # --json defaults to SUPPRESS: absent means "the default body", while null is a body.
        given = {"body": args.json} if "json" in args else {}
        request = transcript_request(
            args.path, args.method, args.query_text, user=args.user, **given
        )
        fixture = transcript_fixture(
            data,
            args.id or _slug(Path(args.file).stem),
            f"imported from {Path(args.file).name} by difytw-fixture import-sse",
            request,
            first_byte=args.first_byte,
            interval=args.interval,
            tokens_per_second=args.tokens_per_second,
            notes=args.notes,
        )
    except TranscriptError as e:
        raise InputError(f"{args.file}: {e}") from None
    _write(dumps(fixture), args.output)
    _warn(fixture, args.output or "<stdout>")
    return 0


def _import_har(args: argparse.Namespace) -> int:
    try:
        har = json.loads(_read(args.file))
    except ValueError as e:
        raise InputError(f"{args.file}: not JSON, so not a HAR file ({e})") from None
    name = Path(args.file).name
    try:
        fixtures, skipped = import_har(har, name, args.prefix or _slug(Path(args.file).stem))
    except HarError as e:
        raise InputError(f"{args.file}: {e}") from None
    for line in skipped:
        print(f"{args.file}: {line}", file=sys.stderr)
    if not fixtures:
        raise InputError(f"{args.file}: no text/event-stream entry with a body to import")
    out = Path(args.output)
    targets = [out / f"{fixture.id}.jsonl" for fixture in fixtures]
    taken = [target for target in targets if target.exists()]
    if taken and not args.force:
        raise InputError(f"{taken[0]} already exists (--force overwrites)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: {e.strerror}") from None
    for fixture, target in zip(fixtures, targets, strict=True):
        _write(dumps(fixture), str(target))
        print(f"wrote {target}", file=sys.stderr)
        _warn(fixture, str(target))
    return 0


def _export_har(args: argparse.Namespace) -> int:
    fixtures = [_load(path) for path in fixture_paths(args.paths)]
    har = export_har(fixtures, args.base_url)
    _write(json.dumps(har, ensure_ascii=False, indent=1) + "\n", args.output)
    return 0


def _retime(args: argparse.Namespace) -> int:
    result = retime(_load(args.file), args.speed, args.max_gap)
    _write(dumps(result), args.file if args.in_place else args.output)
    return 0


# -- pieces -------------------------------------------------------------------------------------


def fixture_paths(paths: Iterable[str]) -> list[Path]:
    """Each PATH, or the ``*.jsonl`` files of a directory (sorted)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise InputError(f"{path}: no *.jsonl file in this directory")
            found += files
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    return found


def _warn(fixture: Fixture, name: str) -> None:
    """Lint what was just written: an import must not slip a key or a bad stream in silently."""
    for finding in lint_text(dumps(fixture), name):
        print(f"warning: {finding}", file=sys.stderr)


def _load(path: str | os.PathLike[str]) -> Fixture:
    try:
        return load(path)
    except FixtureError as e:
        raise InputError(str(e)) from None
    except ValueError as e:  # fixture.load lets a non-ASCII b64 string through unlabelled
        raise InputError(f"{path}: {e}") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None


def _write(text: str, path: str | None) -> None:
    if path is None or path == "-":
        sys.stdout.write(text)
        return
    # Write beside, then rename: --in-place never leaves half a fixture behind.
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(partial, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise InputError(f"{path}: {e.strerror}") from None


def _slug(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "imported"


def _fixture_id(text: str) -> str:
    if not _ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' or '-'")
    return text


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None


def _at_least(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)  # argparse turns the ValueError into a usage error
        if not low <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value

    return parse


def _above(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be > {low:g}, got {text}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
