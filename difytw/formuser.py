"""The ``user`` field of a multipart upload, found and rewritten while streaming (pure).

``/files/upload`` and ``/audio-to-text`` read ``user`` from a form field next to the file
(dify-contract.md section 1.2).  :class:`FormUser` runs the body through python-multipart's
streaming parser slice by slice: in *scan* mode it only collects the ``user`` values; in
*rewrite* mode it writes the body again, every part as it came (headers and data bytes
untouched) except the ``user`` field, which carries the proxy's value, so a 20 MB upload
changes in those few bytes only and is never held in memory.

Two parsers read this body -- this one and Dify's (Werkzeug) -- and they must not disagree
about which field is ``user``, or a caller could smuggle one past the proxy.  So the
rewritten body is re-framed canonically (no preamble, epilogue or padding, CRLF only) and
what the parsers are known to read differently is refused with 400 ``invalid_param``:

- the delimiter ``--BOUNDARY`` inside a part (RFC 2046 section 5.1.1 forbids it; Werkzeug
  also takes a bare LF or CR before it as a line break, python-multipart only CRLF);
- a bare CR or LF inside a part header (Werkzeug splits header lines on those too);
- a ``Content-Disposition`` that is not plain ``form-data; name="..."[; filename="..."]``:
  ``name*=`` (RFC 7578 section 4.2 forbids it; Werkzeug decodes it, python-multipart skips
  it), backslashes or ``%`` in the name, repeated parameters or headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

from difytw.refusal import Refusal

# RFC 2046 section 5.1.1: 1-70 bchars, not ending in a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TCHARS = rb"[0-9A-Za-z!#$%&'*+\-.^_`|~]+"  # RFC 9110 section 5.6.2: token
_TOKEN = re.compile(_TCHARS)
# '; key=token' or '; key="quoted"' with no escapes, quotes or line breaks inside.
_PARAM = re.compile(
    rb"[ \t]*;[ \t]*(" + _TCHARS + rb')=(?:"([^"\\\r\n]*)"|(' + _TCHARS + rb"))[ \t]*"
)
# Enough of a forged value to log it; the field is replaced whatever its length.
_KEEP_VALUE = 1024


def malformed(why: str) -> Refusal:
    return Refusal(400, "invalid_param", f"Malformed multipart body: {why}.")


def _params(value: bytes, position: int) -> dict[bytes, bytes]:
    """Strict ``; key=value`` parameters from ``position`` to the end (keys lower-cased)."""
    params: dict[bytes, bytes] = {}
    while position < len(value):
        match = _PARAM.match(value, position)
        if match is None:
            raise malformed("a header parameter is not plain")
        key = match.group(1).lower()
        if key in params:
            raise malformed("a header parameter is repeated")
        params[key] = match.group(2) if match.group(2) is not None else match.group(3)
        position = match.end()
    return params


def form_boundary(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type; None for other types."""
    media = content_type.partition(b";")[0].strip().lower()
    if media != b"multipart/form-data":
        return None
    semicolon = content_type.find(b";")
    params = _params(content_type, semicolon) if semicolon >= 0 else {}
    boundary = params.get(b"boundary", b"")
    if any(b"*" in key for key in params) or not _BOUNDARY.fullmatch(boundary):
        raise malformed("the Content-Type must name one plain RFC 2046 boundary")
    return boundary


def content_type_for(boundary: bytes) -> bytes:
    """The canonical Content-Type for a body re-framed with ``boundary``."""
    if _TOKEN.fullmatch(boundary):
        return b"multipart/form-data; boundary=" + boundary
    return b'multipart/form-data; boundary="' + boundary + b'"'


def field_name(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The part's name, from a strictly plain ``Content-Disposition`` (module docstring)."""
    values = [value for name, value in headers if name.lower() == b"content-disposition"]
    if len(values) != 1:
        raise malformed("each part needs exactly one Content-Disposition")
    value = values[0]
    if value[:9].lower() != b"form-data":
        raise malformed("a part's Content-Disposition must be form-data")
    params = _params(value, 9)
    if any(key.startswith(b"name*") for key in params):
        raise malformed("a part name must not use the extended name*= syntax")
    name = params.get(b"name")
    if name is None or b"%" in name:
        raise malformed("a part has no plain name")
    return name


class FormUser:
    """Finds (``write`` None) or replaces (``write`` given) the ``user`` form field.

    ``feed`` slices of the body, then ``close``: it returns every ``user`` value in order,
    and in rewrite mode writes the closing delimiter after putting ``user`` (the value
    given) in place of the first ``user`` field, dropping any other, or adding one last.
    """

    def __init__(
        self, boundary: bytes, *, user: str = "", write: Callable[[bytes], object] | None = None
    ) -> None:
        self.values: list[str] = []
        self._boundary = boundary
        self._marker = b"--" + boundary
        self._user_part = b'--%s\r\nContent-Disposition: form-data; name="user"\r\n\r\n%s\r\n' % (
            boundary,
            user.encode("utf-8"),
        )
        self._write = write
        self._wrote_user = False
        self._ended = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._role = "other"  # "other" parts are copied; "user" parts are collected
        self._tail = b""
        self._collected = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> None:
        if self._ended:
            return  # the epilogue: ignored by every reader and dropped when rewriting
        try:
            self._parser.write(data)
        except FormParserError as error:
            raise malformed(str(error).split(" (", 1)[0]) from None

    def close(self) -> list[str]:
        if not self._ended:
            raise malformed("it ends before its closing boundary")
        if self._write is not None:
            if not self._wrote_user:
                self._write(self._user_part)
            self._write(self._marker + b"--\r\n")
        return self.values

    # -- python-multipart callbacks ---------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = []
        self._tail = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if b"\n" in self._value or b"\r" in self._value:
            raise malformed("a part header holds a bare line break")
        self._headers.append((bytes(self._field), bytes(self._value)))
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if field_name(self._headers) == b"user":
            self._role = "user"
            self._collected.clear()
            return
        self._role = "other"
        if self._write is not None:
            lines = b"".join(name + b": " + value + b"\r\n" for name, value in self._headers)
            self._write(self._marker + b"\r\n" + lines + b"\r\n")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._marker in self._tail + piece:
            raise malformed("a part contains its boundary")
        self._tail = (self._tail + piece)[-(len(self._marker) - 1) :]
        if self._role == "user":
            room = _KEEP_VALUE - len(self._collected)
            if room > 0:
                self._collected += piece[:room]
        elif self._write is not None:
            self._write(piece)

    def _part_end(self) -> None:
        if self._role == "user":
            self.values.append(self._collected.decode("utf-8", "replace"))
            if self._write is not None and not self._wrote_user:
                self._write(self._user_part)
                self._wrote_user = True
        elif self._write is not None:
            self._write(b"\r\n")

    def _end(self) -> None:
        self._ended = True
