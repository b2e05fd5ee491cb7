"""The framing both sides speak: linear in message size, deadline checked on every read, sizes known
before bytes are read, valid UTF-8 out whatever comes in."""

from __future__ import annotations

import os
import threading
import time

import pytest

from rlm_local.sandbox.worker import protocol


def _pipe_writer(data: bytes, chunk: int) -> int:
    r, w = os.pipe()

    def feed():
        try:
            for i in range(0, len(data), chunk):
                os.write(w, data[i : i + chunk])
        except OSError:
            pass
        finally:
            os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return r


@pytest.mark.timeout(60)
def test_a_long_header_line_is_scanned_once():
    """20 MB arriving in 4 KB reads: a reader that rescanned its buffer after each read would scan
    ~50 GB here; this one finishes at once."""
    line = b'{"type":"x","parts":[],"pad":"' + b"a" * 20_000_000 + b'"}\n'
    r = _pipe_writer(line, 4096)
    reader = protocol.Reader(r, max_header=1 << 30)
    assert reader.read_header(time.monotonic() + 50)["type"] == "x"
    os.close(r)


def test_a_flood_cannot_outrun_the_deadline():
    r, w = os.pipe()
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            try:
                os.write(w, b"x" * 65536)
            except OSError:
                return

    threading.Thread(target=flood, daemon=True).start()
    reader = protocol.Reader(r, max_header=1 << 40)
    t0 = time.monotonic()
    with pytest.raises(protocol.ChannelTimeout):
        reader.read_header(t0 + 0.5)
    assert time.monotonic() - t0 < 5
    stop.set()
    os.close(r)
    os.close(w)


def test_header_cap_refuses_before_buffering_more():
    r = _pipe_writer(b"y" * (3 << 20), 65536)
    reader = protocol.Reader(r, max_header=1 << 20)
    with pytest.raises(protocol.MessageTooLarge):
        reader.read_header(time.monotonic() + 10)
    assert len(reader.buf) < (1 << 20) + (1 << 20) + 1
    os.close(r)


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe",
        b"[1, 2]",
        b'"s"',
        b'{"parts": [-1]}',
        b'{"parts": "12"}',
        b'{"parts": [true]}',
    ],
)
def test_bad_headers_decode_to_none(line):
    assert protocol.decode_header(line) is None


def test_parts_round_trip_with_surrogates_replaced():
    data = protocol.encode({"type": "t"}, ["plain", "", "lone \ud800 surrogate", "é\x01"])
    r = _pipe_writer(b"\n" + data, 7)
    reader = protocol.Reader(r)
    header = reader.read_header(time.monotonic() + 5)
    assert reader.read_parts(header, time.monotonic() + 5) == ["plain", "", "lone \ufffd surrogate", "é\x01"]
    os.close(r)


@pytest.mark.parametrize("chunk", [512, 1 << 20])
def test_resync_skips_a_refused_message_up_to_the_next_line(chunk):
    r = _pipe_writer(b"z" * 5000 + b"\n" + protocol.encode({"type": "restored"}), chunk)
    reader = protocol.Reader(r, max_header=1000)
    with pytest.raises(protocol.MessageTooLarge):
        reader.read_header(time.monotonic() + 5)
    reader.resync()
    assert reader.read_header(time.monotonic() + 5)["type"] == "restored"
    os.close(r)


def test_call_parts_round_trip():
    for prompts, contexts in (
        (["a"], None),
        (["a", ""], None),
        (["q"], [""]),
        (["q"], [["", "x"]]),
        (["q"], [{"k": "", "": "v"}]),
        (["q", "r"], [None, ["z"]]),
    ):
        header, parts = protocol.call_parts(prompts, contexts)
        assert protocol.split_call(header, parts) == (prompts, contexts)
    assert protocol.call_cost(["a"], [[""] * 10]) == (11, 1)
