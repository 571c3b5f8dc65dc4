"""Raw STOMP frames fuzzed at pierd's VDSM-compatible STOMP endpoint.

Inputs: sequences of frames with random or real commands, random, real and escaped headers,
random bodies, right, wrong and absurd content-lengths, missing or doubled NULs, CRLF line
ends, header blocks and bodies near the 1 MiB frame limit, heart-beats (EOLs) between frames,
with or without a valid CONNECT first, and cut into random TCP writes. Properties: everything
pierd sends back is a sequence of well-formed STOMP frames (CONNECTED, RECEIPT, MESSAGE or
ERROR) and heart-beats, with no traceback text; once the client ends its side, pierd closes the
connection within a bound (it never hangs on a client); and after every example a fresh,
well-behaved client can still CONNECT, SUBSCRIBE and call Host.ping2.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import SCHEMA, Credentials, Target, bound_waits, fuzz_settings, leaks_traceback, tried

MAX_FRAME = 1 << 20  # VdsmStompListener's default max_frame
CLOSE_BOUND = 5.0  # seconds pierd may take to close once the client has ended its side
SERVER_COMMANDS = {"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"}
REQUESTS = "jms.topic.vdsm_requests"
EVENTS = "jms.queue.events"

# -- strategies -------------------------------------------------------------------------------------

CLIENT_COMMANDS = ["SEND", "SEND", "SEND", "SUBSCRIBE", "SUBSCRIBE", "UNSUBSCRIBE", "CONNECT", "DISCONNECT",
                   "ACK", "NACK", "BEGIN", "COMMIT", "ABORT", "STOMP"]
# Mostly real commands and header names (so that frames get past the parser), sometimes anything.
COMMANDS = st.one_of(*[st.sampled_from(CLIENT_COMMANDS)] * 8, st.sampled_from(
    ["CONNECTED", "MESSAGE", "ERROR", "RECEIPT", "send", "", " ", "SEND ", "CONNECT\r", "S\u00c9ND"]),
    st.text(max_size=12))
REAL_HEADERS = ["destination", "destination", "id", "id", "ack", "receipt", "reply-to", "content-type",
                "heart-beat", "accept-version", "host", "login", "passcode", "subscription", "ovirtCorrelationId",
                "transaction"]
HEADER_NAMES = st.one_of(*[st.sampled_from(REAL_HEADERS)] * 12, st.sampled_from(["", "content-length", "a\\cb", "x\\t"]),
                         st.text(max_size=10))
SAFE_TEXT = st.text(st.characters(blacklist_characters="\r\n:\\", blacklist_categories=("Cs",)), max_size=20)
DESTINATIONS = st.sampled_from([REQUESTS, REQUESTS, "jms.topic.vdsm_irs_requests", EVENTS, "jms.topic.vdsm_responses",
                                f"{REQUESTS}.x", "jms.topic", "jms", "fuzz-replies", "/queue/x"]) | SAFE_TEXT
SAFE_VALUES = st.one_of(
    DESTINATIONS, SAFE_TEXT,
    st.sampled_from(["1.2", "1.0,1.1", "0,0", "0,24000", "1,1", "-1,5", "x,y", "99999999999,1", "auto", "client",
                     "client-individual", "application/json", "text/plain", "fuzz-sub", "r1"]),
)
_ESCAPES = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
HEADER_VALUES = st.one_of(
    *[SAFE_VALUES] * 8, st.text(max_size=20).map(lambda value: value.translate(_ESCAPES)),
    st.text(max_size=20), st.sampled_from(["\\n", "\\c", "\\t", "\\", "a\\", "a:b"]),
)
VERB_NAMES = sorted(SCHEMA.verbs)
REQUEST_BODIES = st.sampled_from(VERB_NAMES).map(
    lambda name: json.dumps([{"jsonrpc": "2.0", "method": name, "params": bound_waits(name, {}), "id": name}]))
BODIES = st.one_of(
    st.binary(max_size=80), REQUEST_BODIES.map(str.encode), REQUEST_BODIES.map(str.encode),
    st.sampled_from([b"", b"[]", b"{}", b"null", b"\x00", b"[" * 2000, b'{"jsonrpc":"2.0","method":"Host.ping2"}']),
)


def _frame(command: bytes, headers: list[tuple[str, str]], body: bytes, *, eol: bytes = b"\n",
           length: object = "right", terminator: bytes = b"\0", extra: list[bytes] | None = None) -> bytes:
    lines = [command] + [f"{name}:{value}".encode("utf-8", "surrogatepass") for name, value in headers]
    lines += extra or []
    if length is not None:
        lines.append(f"content-length:{len(body) if length == 'right' else length}".encode())
    return eol.join(lines) + eol + eol + body + terminator


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    """A well-formed client frame with real headers: SEND (mostly requests), SUBSCRIBE, UNSUBSCRIBE."""
    command = draw(st.sampled_from(["SEND", "SEND", "SEND", "SUBSCRIBE", "UNSUBSCRIBE"]))
    receipt = [("receipt", draw(SAFE_VALUES))] if draw(st.integers(0, 3)) == 0 else []
    extra = draw(st.lists(st.tuples(st.sampled_from(REAL_HEADERS), SAFE_VALUES), max_size=2))
    if command == "SEND":
        headers = [("destination", draw(st.just(REQUESTS) | DESTINATIONS)), ("content-type", "application/json"),
                   ("reply-to", draw(st.sampled_from(["fuzz-replies", "fuzz-replies", "nobody"]) | DESTINATIONS))]
        body = draw(BODIES)
    else:
        headers = [("id", draw(st.sampled_from(["fuzz-sub", "s2", "s3"]) | SAFE_TEXT)),
                   ("destination", draw(DESTINATIONS)), ("ack", draw(st.sampled_from(["auto", "auto", "client"])))]
        body = b""
    length = draw(st.sampled_from(["right", "right", None])) if command == "SEND" else None
    return _frame(command.encode(), headers + receipt + extra, body, eol=draw(st.sampled_from([b"\n", b"\r\n"])),
                  length=length)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Any frame, often broken: command, headers, content-length, body and terminator all vary."""
    eol = draw(st.sampled_from([b"\n", b"\n", b"\n", b"\r\n"]))
    command = draw(COMMANDS).encode("utf-8", "surrogatepass")
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5))
    extra = []
    if draw(st.integers(0, 7)) == 0:
        extra.append(b"x-big:" + b"v" * draw(st.sampled_from([1000, 60_000, MAX_FRAME - 200, MAX_FRAME + 10])))
    body = draw(BODIES)
    length = draw(st.sampled_from(["none"] * 4 + ["right"] * 8 + ["short", "long", "junk", "negative", "huge"]))
    value = {"none": None, "right": "right", "short": max(len(body) - 1, 0), "long": len(body) + 5,
             "junk": draw(st.sampled_from(["", "x", "1.5", "0x10", " 3", "\u0663"])), "negative": -1,
             "huge": draw(st.sampled_from([MAX_FRAME, 2**31, 10**30]))}[length]
    terminator = draw(st.sampled_from([b"\0"] * 6 + [b"", b"\0\0", b"\n\0"]))
    return _frame(command, headers, body, eol=eol, length=value, terminator=terminator, extra=extra)


@dataclass
class Session:
    """What one fuzzed client sends: maybe a CONNECT (with the suite's credentials, none or a wrong
    passcode), then its writes, in order."""

    connect: str | None = None  # the CONNECT's heart-beat header, or None for no CONNECT
    auth: str = "token"  # "token", "none" or "wrong"
    writes: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def connect_frame(self, target: Target) -> bytes:
        if self.connect is None:
            return b""
        frame = target.stomp_connect_frame(self.connect)
        if self.auth == "none":
            frame = re.sub(rb"passcode:[^\n]*\n", b"", frame)
        elif self.auth == "wrong":
            frame = re.sub(rb"passcode:[^\n]*\n", b"", frame).replace(b"\n\n", b"\npasscode:pier_0_x\n\n", 1)
        return frame

    def __repr__(self) -> str:
        return f"Session(connect={self.connect!r}, auth={self.auth!r}, data={self.data!r})"


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    """A CONNECT (mostly, and mostly authenticated), well-formed frames, perhaps one frame of anything
    and more well-formed ones after it, heart-beats between them, all cut into random writes."""
    parts: list[bytes] = []
    connect = None
    if draw(st.integers(0, 3)):
        connect = draw(st.sampled_from(["0,0", "0,24000", "1000,1000", "0,1"]))
        if draw(st.integers(0, 3)):
            parts.append(b"SUBSCRIBE\ndestination:fuzz-replies\nid:fuzz-sub\nack:auto\n\n\0")
    auth = draw(st.sampled_from(["token"] * 6 + ["none", "wrong"]))
    sent = draw(st.lists(valid_frames(), max_size=4))
    if draw(st.integers(0, 3)):
        sent.append(draw(frames()))
        sent += draw(st.lists(valid_frames(), max_size=2))
    for frame in sent:
        parts.append(draw(st.sampled_from([b"", b"", b"\n", b"\r\n", b"\n\n\n"])) + frame)
    data = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=4))))
    return Session(connect, auth, [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)
                                   if end > start])


# -- reading what pierd sends -------------------------------------------------------------------------


def parse_stream(data: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """The frames in what pierd sent (EOL heart-beats skipped); asserts each is complete and well-formed."""
    found = []
    at = 0
    while at < len(data):
        if data[at:at + 1] in (b"\n", b"\r"):
            at += 1
            continue
        end = data.find(b"\n\n", at)
        assert end >= 0, f"an incomplete frame: {data[at:at + 300]!r}"
        lines = data[at:end].decode("utf-8").split("\n")
        command, headers = lines[0], {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"a header without a colon: {line!r}"
            headers.setdefault(name, value)
        start = end + 2
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            assert data[stop:stop + 1] == b"\0", f"the body of {command} is not followed by NUL"
        else:
            stop = data.find(b"\0", start)
            assert stop >= 0, f"{command} has no NUL"
        found.append((command, headers, data[start:stop]))
        at = stop + 1
    return found


def run_session(target: Target, session: Session) -> bytes:
    """Send the session, end our side, and read until pierd closes; everything it sent."""
    sock = target.stomp_socket(timeout=CLOSE_BOUND)
    received = bytearray()
    try:
        for write in [session.connect_frame(target), *session.writes]:
            try:
                sock.sendall(write)
            except (BrokenPipeError, ConnectionResetError):
                break  # pierd already closed (after an ERROR): allowed
            time.sleep(0.001)
        target.assert_stomp_serving()  # a fresh client is served while this one is still connected
        received += _read_while_talking(sock)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + CLOSE_BOUND
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"pierd kept the connection open {CLOSE_BOUND} s after the client ended its "
                                     f"side; it sent {bytes(received[:300])!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return bytes(received)


def _read_while_talking(sock: socket.socket, quiet: float = 0.05) -> bytes:
    """What pierd sends until it pauses for `quiet` seconds (answers to requests, mostly)."""
    received = bytearray()
    deadline = time.monotonic() + CLOSE_BOUND
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


def check_stream(data: bytes) -> None:
    """What pierd sent is well-formed server frames (and heart-beats), without traceback text."""
    assert not leaks_traceback(data), data[:2000]
    for command, headers, body in parse_stream(data):
        assert command in SERVER_COMMANDS, (command, headers)
        if command == "ERROR":
            assert headers.get("message"), headers
        if command == "MESSAGE":  # a response, an event, or what a client sent (relayed as it is)
            assert headers.get("subscription") and headers.get("destination"), headers
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(body)


@fuzz_settings(80)
@given(session=sessions())
def test_raw_frames(target: Target, session: Session) -> None:
    tried("stomp raw frame sessions")
    check_stream(run_session(target, session))
    target.assert_serving()


@fuzz_settings(30)
@given(data=st.binary(min_size=1, max_size=400), connect_first=st.booleans())
def test_random_bytes(target: Target, data: bytes, connect_first: bool) -> None:
    tried("stomp random bytes")
    check_stream(run_session(target, Session("0,0" if connect_first else None, writes=[data])))
    target.assert_serving()


@fuzz_settings(30)
@given(request=st.sampled_from(VERB_NAMES).flatmap(lambda name: st.fixed_dictionaries({
    "jsonrpc": st.just("2.0"), "method": st.just(name), "id": st.text(max_size=8),
    "params": st.dictionaries(st.sampled_from(list(SCHEMA.verbs[name].params) or ["x"]) | st.text(max_size=6),
                              st.none() | st.booleans() | st.integers() | st.text(max_size=20), max_size=3)})),
       batch=st.booleans())
def test_requests_with_random_params(target: Target, request: dict[str, object], batch: bool) -> None:
    """Real verbs with random params over STOMP: every request is answered with a JSON-RPC response."""
    tried("stomp real verbs, random params")
    client = target.stomp_client()
    try:
        params = bound_waits(request["method"], request["params"])
        body = json.dumps([{**request, "params": params}] if batch else {**request, "params": params})
        client.send_frame("SEND", {"destination": REQUESTS, "content-type": "application/json",
                                   "reply-to": client.reply_to}, body.encode())
        response = client.wait_response(request["id"])
        assert set(response) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), response
        if "error" in response:
            assert isinstance(response["error"]["code"], int) and response["error"]["code"] not in (-32603, 16)
            assert not leaks_traceback(json.dumps(response))
    finally:
        client.close()
    target.assert_serving()


# -- defects this suite found, kept as regression tests ------------------------------------------------


FAKE_EVENT = {"jsonrpc": "2.0", "method": "|virt|VM_status|00000000-0000-0000-0000-000000000000",
              "params": {"00000000-0000-0000-0000-000000000000": {"status": "Down"}, "notify_time": 1}}


def test_a_client_cannot_publish_events(target: Target) -> None:
    engine = target.stomp_client()
    spoofer = Target(target.daemon, target.http, target.ws, target.stomp,
                     Credentials(target.daemon.make_token("viewer"))).stomp_client()
    try:
        engine.subscribe(EVENTS)
        engine.call("Host.ping2")  # the subscription is in place once a call made after it is answered
        spoofer.send_frame("SEND", {"destination": EVENTS, "content-type": "application/json"},
                           json.dumps(FAKE_EVENT).encode())
        with pytest.raises(TimeoutError):  # once, pierd relayed it to every events subscriber
            engine.wait_event(lambda event: event == FAKE_EVENT, timeout=1)
    finally:
        engine.close()
        spoofer.close()


def test_a_client_cannot_read_other_clients_requests(target: Target) -> None:
    """Once, any client could SUBSCRIBE to the request destination and read everyone's calls."""
    admin = target.stomp_client()
    viewer = Target(target.daemon, target.http, target.ws, target.stomp,
                    Credentials(target.daemon.make_token("viewer"))).stomp_client()
    try:
        viewer.subscribe(REQUESTS, receipt="sub")
        refusal = viewer.read_frame()
        assert (refusal.command, refusal.headers.get("message"), refusal.headers.get("receipt-id")) == \
            ("ERROR", "Subscription not allowed", "sub")
        assert viewer.call("Host.ping2") is True  # the connection goes on
        admin.call("Host.getVMList", vmList=["00000000-0000-0000-0000-000000000000"])
        with pytest.raises(TimeoutError):  # once, every subscriber got a copy of it
            viewer.read_until(lambda: any(REQUESTS in message.headers.get("destination", "")
                                          for message in viewer.messages), timeout=1)
    finally:
        admin.close()
        viewer.close()
