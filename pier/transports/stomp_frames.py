"""STOMP 1.2 frames on the wire: an incremental reader with a size limit, and an encoder.

stomp.py gives the frame type (`stomp.utils.Frame`) and decodes headers that hold escapes
(`stomp.utils.parse_frame`, which also keeps the first of repeated headers, as STOMP 1.2 says).
It finds frame boundaries only inside its client transport, with no size limit and trusting a
short `content-length`, so `FrameReader` finds them itself: by `content-length` when the frame
has one (a body may then hold NULs, and the byte after it must be the NUL), else at the first
NUL. Two paths are ours for speed, measured per SEND of VDSM's client: headers without any
escape (nearly all) are split directly (parse_frame's per-header regular expressions made
reading a frame ~40 us; ~18 without), and frames are laid out directly, escaping only values
that need it (stomp.py's `convert_frame` writes values unescaped; escaping and it took ~15 us
a frame, ~5 this way).
"""

from __future__ import annotations

import re

from stomp.utils import Frame, parse_frame

__all__ = ["Frame", "FrameError", "FrameReader", "encode_frame", "HEARTBEAT"]

HEARTBEAT = b"\n"

_HEADERS_END = re.compile(rb"\n\r?\n")
_ESCAPE = re.compile(rb"\\(.?)", re.S)
_VALID_ESCAPES = (b"r", b"n", b"c", b"\\")
_ESCAPES = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
_SPECIAL = re.compile(r"[\\\r\n:]")
_EOL = b"\r\n"


class FrameError(Exception):
    """Bytes that are not a STOMP frame; the stream cannot be trusted past them."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(f"{message}: {detail}" if detail else message)
        self.message = message
        self.detail = detail


class FrameReader:
    """Turns a byte stream into frames; a frame larger than `max_frame` bytes is an error.

    Heart-beats (EOLs between frames) are skipped. Nothing past an error is returned.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._scan = 0
        self._head: tuple[Frame, int, int] | None = None  # frame without body, body start, length
        self._failed = False

    @property
    def in_frame(self) -> bool:
        """True while the bytes fed so far end inside a frame (heart-beats between frames aside)."""
        return self._head is not None or bool(self._buf)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """The frames completed by `data`, in order; an error, if any, comes last."""
        if self._failed:
            return []
        self._buf += data
        out: list[Frame | FrameError] = []
        try:
            while (frame := self._next()) is not None:
                out.append(frame)
        except FrameError as exc:
            self._failed = True
            self._buf.clear()
            out.append(exc)
        return out

    def _next(self) -> Frame | None:
        buf = self._buf
        if self._head is None:
            skip = 0
            while skip < len(buf) and buf[skip] in _EOL:
                skip += 1
            if skip:
                del buf[:skip]
                self._scan = 0
            if not buf:
                return None
            match = _HEADERS_END.search(buf, max(self._scan - 2, 0))
            if match is None:
                self._check_size(len(buf))
                self._scan = len(buf)
                return None
            self._check_size(match.end())
            frame = _parse_head(bytes(buf[:match.start()]))
            self._head = (frame, match.end(), self._content_length(frame, match.end()))
            self._scan = match.end()
        frame, start, length = self._head
        if length >= 0:
            end = start + length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise FrameError("Invalid content-length",
                                 f"the byte after the {length} bytes of the body is not the NUL that ends a frame")
        else:
            end = buf.find(b"\0", self._scan)
            if end < 0:
                self._check_size(len(buf))
                self._scan = len(buf)
                return None
            self._check_size(end + 1)
        frame.body = bytes(buf[start:end])
        del buf[:end + 1]
        self._head = None
        self._scan = 0
        return frame

    def _content_length(self, frame: Frame, body_start: int) -> int:
        value = frame.headers.get("content-length")
        if value is None:
            return -1
        if not (value.isascii() and value.isdigit()):
            raise FrameError("Invalid content-length", f"{value[:40]!r} is not a byte count")
        length = int(value)
        self._check_size(body_start + length + 1)
        return length

    def _check_size(self, size: int) -> None:
        if size > self.max_frame:
            raise FrameError("Frame too large", f"a frame may have at most {self.max_frame} bytes")


def _parse_head(head: bytes) -> Frame:
    """The command and headers of a frame (its body comes later)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("Malformed frame", "the command and headers must be UTF-8") from None
    lines = text.split("\n")
    command = lines[0].rstrip("\r")
    if not command or not command.isascii() or not command.isalpha():
        raise FrameError("Malformed frame", f"{command[:40]!r} is not a command")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = (line[:-1] if line.endswith("\r") else line).partition(":")
        if not name or not colon:
            raise FrameError("Malformed frame", f"header line {line[:40]!r} has no name and colon")
        headers.setdefault(name, value)
    if "\\" not in text:
        return Frame(command, headers, b"")
    if any(match.group(1) not in _VALID_ESCAPES for match in _ESCAPE.finditer(head)):
        raise FrameError("Malformed frame", "a header holds an escape STOMP 1.2 does not define")
    frame = parse_frame(head + b"\n\n")
    frame.body = b""
    return frame


def encode_frame(command: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    """One frame on the wire; a body always gets its `content-length`."""
    lines = [command, *(f"{_escape(name)}:{_escape(value)}" for name, value in headers.items())]
    if body is not None:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + (body or b"") + b"\0"


def _escape(value: str) -> str:
    return value.translate(_ESCAPES) if _SPECIAL.search(value) else value


def flow_id_of(headers: dict[str, str]) -> str | None:
    """The engine's flow id (VDSM's `ovirtCorrelationId` header), trimmed for logs."""
    flow = "".join(char for char in headers.get("ovirtCorrelationId", "") if char.isprintable()).strip()
    return flow[:100] or None
