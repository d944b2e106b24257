"""``chunked.ChunkedDecoder`` in memory: every split point of every sample body, random
bodies cut into random reads, and the same answers as Twisted's own chunked decoder."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss

from difytw.chunked import MAX_SIZE_LINE, MAX_TRAILERS, ChunkedDecoder, ChunkedError


def encode(
    chunks: list[bytes], *, ext: bytes = b"", trailers: list[bytes] = (), upper: bool = False
) -> bytes:
    size = b"%X" if upper else b"%x"
    body = b"".join(size % len(chunk) + ext + b"\r\n" + chunk + b"\r\n" for chunk in chunks)
    return body + b"0" + ext + b"\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


class Outcome:
    """What a decoder handed on: data per feed, and the rest once done."""

    def __init__(self) -> None:
        self.deliveries: list[bytes] = []
        self.rests: list[bytes] = []
        self.decoder = ChunkedDecoder(self.deliveries.append, self.rests.append)

    def feed_all(self, reads: list[bytes]) -> None:
        for read in reads:
            if self.decoder.done:
                # What comes after the body is no longer the decoder's (Twisted's parser
                # takes it over): it counts as rest.
                self.rests[-1] += read
                continue
            before = len(self.deliveries)
            self.decoder.feed(read)
            # One delivery per read at most, never an empty one.
            assert len(self.deliveries) - before <= 1
            assert all(self.deliveries[before:])

    @property
    def data(self) -> bytes:
        return b"".join(self.deliveries)


SAMPLES = [
    [b'data: {"event":"message","answer":"Hi"}\n\n', b"event: ping\n\n", b"x" * 17],
    [b"a"],
    [b"\r\n" * 3, b"0\r\n\r\n"],  # body bytes that look like framing
    [bytes(range(256))],
]


@pytest.mark.parametrize("chunks", SAMPLES)
@pytest.mark.parametrize("ext", [b"", b";name=value", b';q="x y"'])
@pytest.mark.parametrize("trailers", [[], [b"X-Checksum: abc", b"X-Other: 1"]])
def test_every_split_point_gives_the_same_body_and_rest(
    chunks: list[bytes], ext: bytes, trailers: list[bytes]
) -> None:
    wire = encode(chunks, ext=ext, trailers=trailers) + b"HTTP/1.1 200 OK\r\n"
    for cut in range(len(wire) + 1):
        for second in (cut, min(len(wire), cut + 3)):
            outcome = Outcome()
            outcome.feed_all([wire[:cut], wire[cut:second], wire[second:]])
            assert outcome.data == b"".join(chunks), (cut, second)
            assert outcome.rests == [b"HTTP/1.1 200 OK\r\n"], (cut, second)


def test_byte_by_byte() -> None:
    chunks = SAMPLES[0]
    wire = encode(chunks, upper=True)
    outcome = Outcome()
    outcome.feed_all([wire[i : i + 1] for i in range(len(wire))])
    assert outcome.data == b"".join(chunks)
    assert outcome.rests == [b""]
    outcome.decoder.close()  # complete: no error


def test_a_read_of_many_chunks_is_one_delivery() -> None:
    events = [b"data: %d\n\n" % i for i in range(60)]
    outcome = Outcome()
    outcome.feed_all([encode(events)])
    assert outcome.deliveries == [b"".join(events)]


def test_a_read_inside_one_chunk_is_handed_on_as_is() -> None:
    outcome = Outcome()
    big = b"y" * 100
    outcome.feed_all([b"64\r\n", big[:40], big[40:]])
    assert outcome.deliveries[0] is not None and outcome.deliveries == [big[:40], big[40:]]


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
    rest=st.binary(max_size=10),
)
def test_random_bodies_cut_into_random_reads(
    chunks: list[bytes], cuts: list[int], rest: bytes
) -> None:
    wire = encode(chunks) + rest
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    outcome = Outcome()
    outcome.feed_all([wire[a:b] for a, b in itertools.pairwise(points)])
    assert outcome.data == b"".join(chunks)
    assert outcome.rests == [rest]
    assert outcome.decoder.done


@pytest.mark.parametrize(
    "wire",
    [
        b"x\r\n",  # not hex
        b"+5\r\nhello\r\n",  # a sign
        b"0x5\r\nhello\r\n",  # a prefix
        b" 5\r\nhello\r\n",  # a space before the size
        b"5 \r\nhello\r\n",  # and after it
        b"\r\n",  # no size at all
        b"5\r\nhelloXY",  # data not followed by CRLF (its data was valid: handed on)
        b"5\r\nhello\rX",
        b"5;\x00\r\nhello\r\n",  # a control character in an extension
        b"1" * 17 + b"\r\n",  # more than 2**64
        b"5;" + b"a" * MAX_SIZE_LINE + b"\r\n",  # a size line over the cap
        b"1" * (MAX_SIZE_LINE + 1),  # the same, before its end arrived
        b"5\nhello\r\n",  # a bare LF
    ],
)
def test_malformed_bodies_raise_and_what_came_before_is_handed_on(wire: bytes) -> None:
    good = encode([b"ok"])[: -len(b"0\r\n\r\n")]
    outcome = Outcome()
    before_fault = b"okhello" if wire.startswith(b"5\r\nhello") else b"ok"
    with pytest.raises(ChunkedError):
        outcome.feed_all([good + wire])
    assert outcome.data == before_fault
    # Fed a byte at a time, the fault is found just the same.
    outcome = Outcome()
    with pytest.raises(ChunkedError):
        outcome.feed_all([good] + [wire[i : i + 1] for i in range(len(wire))])
    assert outcome.data == before_fault


def test_trailers_over_the_cap_raise() -> None:
    outcome = Outcome()
    with pytest.raises(ChunkedError, match="trailers"):
        outcome.feed_all([b"0\r\n" + b"X-A: " + b"a" * MAX_TRAILERS])
    outcome = Outcome()
    with pytest.raises(ChunkedError, match="trailers"):
        outcome.feed_all([b"0\r\n"] + [b"X-A: 1\r\n"] * (MAX_TRAILERS // 8 + 1))


def test_a_cut_body_fails_on_close_and_data_after_the_end_is_refused() -> None:
    outcome = Outcome()
    outcome.feed_all([b"5\r\nhel"])
    with pytest.raises(ChunkedError):
        outcome.decoder.close()
    outcome.feed_all([b"lo\r\n0\r\n\r\n"])
    assert outcome.data == b"hello" and outcome.decoder.done
    with pytest.raises(ChunkedError):
        outcome.decoder.feed(b"more")


def twisted_decode(reads: list[bytes]) -> tuple[bytes, bytes | None, bool]:
    data: list[bytes] = []
    rest: list[bytes] = []
    decoder = _ChunkedTransferDecoder(data.append, rest.append)
    try:
        for read in reads:
            decoder.dataReceived(read)
        decoder.noMoreData()
    except (_DataLoss, Exception):
        return b"".join(data), None, False
    return b"".join(data), rest[0], True


def ours_decode(reads: list[bytes]) -> tuple[bytes, bytes | None, bool]:
    outcome = Outcome()
    try:
        outcome.feed_all(reads)
        outcome.decoder.close()
    except ChunkedError:
        return outcome.data, None, False
    return outcome.data, outcome.rests[0], True


# Bytes that make up chunked framing, good and bad, so random input often gets far.
framing = st.lists(
    st.sampled_from([b"0", b"5", b"a", b"F", b"g", b";", b"=", b" ", b"\r", b"\n", b"\r\n", b"x"]),
    max_size=60,
).map(b"".join)


@given(wire=framing, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=4))
def test_same_answers_as_twisteds_decoder(wire: bytes, cuts: list[int]) -> None:
    # Twisted takes sizes of any length; this decoder stops at 16 hex digits (2**64).
    assume(not any(len(run) > 16 for run in _hex_runs(wire)))
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    reads = [wire[a:b] for a, b in itertools.pairwise(points)]
    assert ours_decode(reads) == twisted_decode(reads)


def _hex_runs(wire: bytes) -> list[bytes]:
    runs, run = [], b""
    for byte in wire:
        if chr(byte) in "0123456789abcdefABCDEF":
            run += bytes([byte])
        else:
            runs.append(run)
            run = b""
    return [*runs, run]
