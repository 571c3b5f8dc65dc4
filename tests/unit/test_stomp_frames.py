"""STOMP frame reading and writing: boundaries, content-length, escapes, the size limit."""

from __future__ import annotations

import random

import pytest
from stomp.utils import parse_frame

from pier.transports.stomp_frames import FrameError, FrameReader, encode_frame


def _feed_bytewise(reader: FrameReader, data: bytes) -> list:
    out = []
    for index in range(len(data)):
        out += reader.feed(data[index:index + 1])
    return out


def test_frames_split_anywhere_come_out_whole() -> None:
    data = (b"\n\r\nCONNECT\r\naccept-version:1.2\r\nheart-beat:0,24000\r\n\r\n\0\n"
            b"SUBSCRIBE\ndestination:r\nack:auto\nid:a\\cb\n\n\0"
            b"SEND\ndestination:q\ncontent-length:5\n\na\0b\nc\0\n\n")
    frames = _feed_bytewise(FrameReader(1024), data)
    assert [(f.cmd, f.headers, f.body) for f in frames] == [
        ("CONNECT", {"accept-version": "1.2", "heart-beat": "0,24000"}, b""),
        ("SUBSCRIBE", {"destination": "r", "ack": "auto", "id": "a:b"}, b""),
        ("SEND", {"destination": "q", "content-length": "5"}, b"a\0b\nc"),
    ]


def test_first_of_repeated_headers_wins() -> None:
    frame, = FrameReader(1024).feed(b"SEND\ndestination:a\ndestination:b\nx:\\\\\nx:y\n\nbody\0")
    assert frame.headers == {"destination": "a", "x": "\\"}
    assert frame.body == b"body"


@pytest.mark.parametrize("value", ["plain", "a:b", "back\\slash", "new\nline", "cr\rx", ":\\:\n", "üñí", ""])
def test_encoded_headers_read_back(value: str) -> None:
    data = encode_frame("MESSAGE", {"destination": value, value or "k": "v"}, b"\0body\0")
    frame, = FrameReader(1024).feed(data)
    assert frame.headers["destination"] == value
    assert frame.headers[value or "k"] == "v"
    assert frame.headers["content-length"] == "6"
    assert frame.body == b"\0body\0"


def test_frames_without_body_have_no_content_length() -> None:
    assert encode_frame("RECEIPT", {"receipt-id": "7"}) == b"RECEIPT\nreceipt-id:7\n\n\0"
    assert encode_frame("ERROR", {"message": "m"}, b"m") == b"ERROR\nmessage:m\ncontent-length:1\n\nm\0"


def test_our_header_split_agrees_with_stomp_py() -> None:
    rng = random.Random(7)
    alphabet = "abc-_.,; =/0123456789ÄÖ\r"
    for _ in range(300):
        headers = [("".join(rng.choice(alphabet[:-1]) for _ in range(rng.randrange(1, 8))),
                    "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))))
                   for _ in range(rng.randrange(0, 6))]
        head = "SEND\n" + "".join(f"{name}:{value}\n" for name, value in headers)
        data = head.encode() + b"\n"
        if "\r\n" in head or head.endswith("\r"):
            continue  # a header ending in CR is an EOL to both; covered below
        ours, = FrameReader(4096).feed(data + b"\0")
        assert ours.headers == parse_frame(data + b"\n").headers


def test_cr_lf_lines() -> None:
    frame, = FrameReader(1024).feed(b"SEND\r\ndestination:q\r\nx:1\r\n\r\n\0")
    assert frame.headers == {"destination": "q", "x": "1"}


@pytest.mark.parametrize(("data", "message"), [
    (b"SEND\ncontent-length:3\n\nab\0c", "Invalid content-length"),
    (b"SEND\ncontent-length:1e3\n\n", "Invalid content-length"),
    (b"SEND\ncontent-length:\xd9\xa3\n\n", "Invalid content-length"),
    (b"SEND\nx:\\q\n\n\0", "Malformed frame"),
    (b"SEND\nx:ends\\\n\n\0", "Malformed frame"),
    (b"SEND\nno colon\n\n\0", "Malformed frame"),
    (b"\xc3(\n\n\0", "Malformed frame"),
    (b"SEND\ncontent-length:100\n\n", "Frame too large"),
    (b"SEND\n\n" + b"x" * 100, "Frame too large"),
    (b"SEND\nx:" + b"y" * 100, "Frame too large"),
])
def test_errors(data: bytes, message: str) -> None:
    reader = FrameReader(64)
    error, = _feed_bytewise(reader, data) or reader.feed(b"")
    assert isinstance(error, FrameError) and error.message == message
    assert reader.feed(b"SEND\n\n\0") == []  # nothing past an error


def test_frames_before_an_error_are_kept() -> None:
    out = FrameReader(1024).feed(b"SEND\n\nok\0SEND\nbad\n\n\0SEND\n\nlost\0")
    assert out[0].body == b"ok"
    assert isinstance(out[1], FrameError) and len(out) == 2


def test_a_frame_of_exactly_the_limit() -> None:
    data = encode_frame("SEND", {"destination": "q"}, b"x" * 40)
    assert FrameReader(len(data)).feed(data)[0].body == b"x" * 40
    assert isinstance(FrameReader(len(data) - 1).feed(data)[0], FrameError)
