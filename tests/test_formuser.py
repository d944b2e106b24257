"""The multipart ``user`` field, found and rewritten while streaming (difytw.formuser)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart import parse_form

from difytw.formuser import FormUser, content_type_for, field_name, form_boundary
from difytw.refusal import Refusal

B = b"----difytwBoundary7MA4YWxkTrZu0gW"


def part(name: bytes, value: bytes, *, filename: bytes | None = None) -> bytes:
    disposition = b'form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"\r\nContent-Type: text/plain'
    return b"--" + B + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + B + b"--\r\n"


UPLOAD = form(part(b"file", b"hello\r\nworld--", filename=b"a.txt"), part(b"user", b"bob"))


def rewrite(body: bytes, user: str = "alice", step: int | None = None) -> tuple[bytes, list[str]]:
    out: list[bytes] = []
    rewriter = FormUser(B, user=user, write=out.append)
    step = step or len(body) or 1
    for start in range(0, len(body), step):
        rewriter.feed(body[start : start + step])
    named = rewriter.close()
    return b"".join(out), named


def scan(body: bytes, step: int | None = None) -> list[str]:
    scanner = FormUser(B)
    step = step or len(body) or 1
    for start in range(0, len(body), step):
        scanner.feed(body[start : start + step])
    return scanner.close()


def fields(body: bytes, boundary: bytes = B) -> list[tuple[str, bytes, bytes | None]]:
    """Every part as (name, value, filename), read by python-multipart's own FormParser."""
    found: list[tuple[str, bytes, bytes | None]] = []

    def on_field(field: Any) -> None:
        found.append((field.field_name.decode(), field.value or b"", None))

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        found.append((file.field_name.decode(), file.file_object.read(), file.file_name))

    headers = {"Content-Type": content_type_for(boundary), "Content-Length": str(len(body))}
    parse_form(headers, io.BytesIO(body), on_field, on_file)
    return found


def refusal(action: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action()
    return caught.value


def test_only_the_user_value_changes() -> None:
    new, values = rewrite(UPLOAD)
    assert values == ["bob"]
    assert new == UPLOAD.replace(b"\r\n\r\nbob\r\n", b"\r\n\r\nalice\r\n")


def test_every_split_point_gives_the_same_answer() -> None:
    expected = UPLOAD.replace(b"\r\n\r\nbob\r\n", b"\r\n\r\nalice\r\n")
    for cut in range(len(UPLOAD) + 1):
        out: list[bytes] = []
        rewriter = FormUser(B, user="alice", write=out.append)
        rewriter.feed(UPLOAD[:cut])
        rewriter.feed(UPLOAD[cut:])
        assert rewriter.close() == ["bob"], cut
        assert b"".join(out) == expected, cut
        scanner = FormUser(B)
        scanner.feed(UPLOAD[:cut])
        scanner.feed(UPLOAD[cut:])
        assert scanner.close() == ["bob"], cut


def test_byte_by_byte() -> None:
    assert rewrite(UPLOAD, step=1)[0] == rewrite(UPLOAD)[0]
    assert scan(UPLOAD, step=1) == ["bob"]


def test_missing_user_is_added_last_and_duplicates_dropped() -> None:
    only_file = form(part(b"file", b"x", filename=b"a.txt"))
    new, values = rewrite(only_file)
    assert values == []
    assert fields(new) == [("file", b"x", b"a.txt"), ("user", b"alice", None)]
    two = form(
        part(b"user", b"mallory"), part(b"file", b"x", filename=b"a.txt"), part(b"user", b"b")
    )
    new, values = rewrite(two)
    assert values == ["mallory", "b"]
    assert fields(new) == [("user", b"alice", None), ("file", b"x", b"a.txt")]


def test_a_file_part_named_user_becomes_the_field() -> None:
    body = form(part(b"user", b"evil", filename=b"u.txt"))
    new, values = rewrite(body)
    assert values == ["evil"] and fields(new) == [("user", b"alice", None)]


def test_preamble_epilogue_and_padding_are_dropped() -> None:
    body = b"\r\n" + UPLOAD.replace(
        b"--" + B + b'\r\nContent-Disposition: form-data; name="user"',
        b"--" + B + b'  \r\nContent-Disposition: form-data; name="user"',
    )
    body += b"epilogue --" + B + b"\r\n"
    new, values = rewrite(body)
    assert values == ["bob"]
    assert new == UPLOAD.replace(b"\r\n\r\nbob\r\n", b"\r\n\r\nalice\r\n")


def test_empty_form_gets_just_the_user() -> None:
    new, values = rewrite(b"--" + B + b"--\r\n")
    assert values == [] and fields(new) == [("user", b"alice", None)]


@pytest.mark.parametrize(
    "body",
    [
        # Werkzeug would take the LF-delimited "user" part inside the file's data.
        form(
            part(
                b"file",
                b"x\n--" + B + b'\nContent-Disposition: form-data; name="user"\n\nv',
                filename=b"a.txt",
            )
        ),
        form(part(b"file", b"--" + B + b"x", filename=b"a.txt")),
        form(part(b"x", b"a")).replace(b'name="x"', b'name="x"\nContent-Disposition: x'),
        form(part(b"x", b"a")).replace(b'name="x"', b"name*=UTF-8''user"),
        form(part(b"x", b"a")).replace(b'name="x"', b'name="x"; name="user"'),
        form(part(b"x", b"a")).replace(b'name="x"', b'name="us\\er"'),
        form(part(b"x", b"a")).replace(b'name="x"', b'name="us%65r"'),
        form(part(b"x", b"a")).replace(b"form-data;", b"attachment;"),
        form(part(b"x", b"a")).replace(b"Content-Disposition: form-data; ", b"X-A: b\r\n"),
        UPLOAD[:-20],  # cut before the closing delimiter
        b"preamble\r\n" + UPLOAD,
        b"",
    ],
)
def test_what_parsers_could_read_differently_is_refused(body: bytes) -> None:
    error = refusal(lambda: rewrite(body))
    assert (error.status, error.code) == (400, "invalid_param")
    if body:
        assert refusal(lambda: scan(body)).status == 400


def test_two_dispositions_are_refused() -> None:
    body = form(part(b"x", b"a")).replace(
        b"Content-Disposition: form-data;",
        b'Content-Disposition: form-data; name="user"\r\nContent-Disposition: form-data;',
    )
    assert refusal(lambda: rewrite(body)).status == 400


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (b"multipart/form-data; boundary=" + B, B),
        (b'Multipart/Form-Data;boundary="a b:c"', b"a b:c"),
        (b"application/json", None),
        (b"text/plain; boundary=x", None),
    ],
)
def test_form_boundary(content_type: bytes, boundary: bytes | None) -> None:
    assert form_boundary(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/form-data",
        b"multipart/form-data; boundary=a; boundary=b",
        b"multipart/form-data; boundary*=UTF-8''x",
        b"multipart/form-data; boundary=" + b"x" * 71,
        b'multipart/form-data; boundary="ends with space "',
        b"multipart/form-data; boundary=a, b",
    ],
)
def test_ambiguous_boundaries_are_refused(content_type: bytes) -> None:
    assert refusal(lambda: form_boundary(content_type)).status == 400


def test_canonical_content_type_quotes_only_when_needed() -> None:
    assert content_type_for(B) == b"multipart/form-data; boundary=" + B
    assert content_type_for(b"a b") == b'multipart/form-data; boundary="a b"'


def test_field_name_takes_plain_dispositions() -> None:
    assert field_name([(b"content-disposition", b"form-data;name=user")]) == b"user"
    assert (
        field_name([(b"Content-Disposition", b'form-data; name="f"; filename="a;b.txt"')]) == b"f"
    )
    plain = b"form-data; name=\"f\"; filename*=UTF-8''%E2%82%AC.txt"
    assert field_name([(b"Content-Disposition", plain)]) == b"f"


names = st.sampled_from([b"file", b"user", b"inputs", b"x-y", b"user2"])
values = st.binary(max_size=40).filter(lambda v: B[:6] not in v)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(names, values, st.booleans()), max_size=5),
    st.text(min_size=1, max_size=10).filter(lambda u: "\r" not in u and "\n" not in u),
    st.integers(min_value=1, max_value=50),
)
def test_rewrite_property(parts: list[tuple[bytes, bytes, bool]], user: str, step: int) -> None:
    body = form(*(part(n, v, filename=b"f.bin" if f else None) for n, v, f in parts))
    new, named = rewrite(body, user=user, step=step)
    assert named == [v.decode("utf-8", "replace") for n, v, _ in parts if n == b"user"]
    before = [(n.decode(), v) for n, v, _ in parts if n != b"user"]
    after = fields(new)
    assert [(n, v) for n, v, _ in after if n != "user"] == before
    assert [v for n, v, _ in after if n == "user"] == [user.encode()]
    assert scan(body, step=step) == named
