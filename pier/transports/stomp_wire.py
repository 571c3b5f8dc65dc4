"""The socket side of one server-side STOMP connection: frames in, bytes out, heart-beats, closing.

A `StompWire` owns a reader thread, which reads frames and hands each to `handle` (the dialect's
commands, in a subclass), and a writer thread, which sends what is queued and a heart-beat when
nothing else went out for a while. The socket is non-blocking and every wait is a poll with a
deadline, so neither thread hangs on a client. A frame offered while nothing is queued or being
written is sent at once by the offering thread (a response from a worker then costs no hand-off
to the writer); the rest is queued in order. Past `out_limit` queued bytes the reader stops
reading and `put` waits, so a client that does not read holds up only itself; one that takes
nothing for `WRITE_STALL` seconds is dropped. TLS sockets (wrapped with
`do_handshake_on_connect=False`) get their handshake on the reader thread.

The reader keeps every deadline of the connection: CONNECT within `CONNECT_TIMEOUT` of the
accept, each frame whole within `FRAME_TIMEOUT` of its first byte (heart-beats and dribbled bytes
do not extend it), the client's heart-beats, and one the dialect sets with `close_at`. Another
thread that closes the connection (`close_after`, say when its credential is revoked) wakes the
reader through an eventfd, so that it lingers and closes at once rather than at the next byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Any

from pier.rpc.addresses import host_of
from pier.rpc.threads import OwnedThread
from pier.transports.stomp_frames import HEARTBEAT, Frame, FrameError, FrameReader

log = logging.getLogger("pier.transports.vdsm_stomp")

CONNECT_TIMEOUT = 10.0  # seconds from accept to CONNECT (the TLS handshake included)
FRAME_TIMEOUT = 10.0  # seconds from a frame's first byte to its last
WRITE_STALL = 60.0  # a client that takes no byte for this long is dropped
CLOSE_FLUSH = 5.0  # how long the last frames (an ERROR, a RECEIPT) may take to leave
LINGER = 1.0  # after them, how long to read and discard before closing, so that no RST eats them
HEARTBEAT_GRACE = 2.0  # a client silent for this many of its heart-beat intervals is dropped
HEARTBEAT_EARLY = 0.9  # ours leave after this fraction of the interval without other traffic

OPEN, CLOSING, CLOSED = range(3)
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class StompWire:
    """One client's socket, its reader and writer threads, and what waits to be sent."""

    @property
    def source(self) -> str:
        """The peer's address without its port."""
        return host_of(self.peer)

    def peer_certificate(self) -> bytes | None:
        """The client's TLS certificate (DER), when it presented one."""
        if self._tls_sock is None:
            return None
        try:
            return self._tls_sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None

    def __init__(self, sock: socket.socket, peer: str, name: str, *, max_frame: int, out_limit: int) -> None:
        self.peer = peer
        self.state = OPEN
        self.connected = False
        self._sock = sock
        self._tls_sock = sock if isinstance(sock, ssl.SSLSocket) else None  # the same socket, when it speaks TLS
        self._io_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._tls_sock is not None else contextlib.nullcontext())
        self._max_frame = max_frame
        self._out_limit = out_limit
        lock = threading.Lock()
        self.cond = threading.Condition(lock)  # waited on for room: queued bytes, requests in flight
        self._work = threading.Condition(lock)  # the writer waits on this for something to send
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._writing = False  # a thread is sending; no other may until it is done
        self._writer_waits = False  # the writer waits for that thread to be done
        self._send_every = 0.0
        self._expect_every = 0.0
        self._last_rx = self._last_tx = time.monotonic()
        self._frame_started: float | None = None  # when the first byte of an unfinished frame came
        self._deadline: tuple[float, str, str] | None = None  # the dialect's: when, and the ERROR to send
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # closed with the socket
        self._reader = OwnedThread(f"{name}-rx", self._run)
        self._writer = OwnedThread(f"{name}-tx", self._write_loop)

    # -- for the dialect ------------------------------------------------------------------------

    def handle(self, frame: Frame) -> None:
        """Act on one frame (on the reader thread)."""
        raise NotImplementedError

    def fail(self, message: str, detail: str = "") -> None:
        """Refuse the connection: send an ERROR for `message`, then close."""
        raise NotImplementedError

    def ended(self) -> None:
        """The connection is closing: drop what refers to it (on the reader thread, once)."""

    def closed(self) -> None:
        """The socket is closed (on the reader thread, last)."""

    def handshake_done(self) -> None:
        """The TLS handshake is complete and `peer_certificate` known (on the reader thread)."""

    def close_at(self, deadline: float, message: str, detail: str = "") -> None:
        """Refuse the connection with `message` at `deadline` (time.monotonic()), unless it ends before."""
        with self.cond:
            self._deadline = (deadline, message, detail)
            self._wake_reader()

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the connection's threads to end (see OwnedThread.join): False, with a warning, if not."""
        return self._reader.join(timeout)

    def abort(self) -> None:
        """Drop the connection now, unsent frames and all; its threads then end."""
        with self.cond:
            self.state = CLOSED
            self.cond.notify_all()
            self._work.notify_all()
        self._shutdown(socket.SHUT_RDWR)

    def heart_beats(self, send_every: float, expect_every: float) -> None:
        """Send a heart-beat when nothing else went out for `send_every` s; expect traffic as often."""
        with self.cond:
            self.connected = True
            self._send_every = send_every
            self._expect_every = expect_every
            self._work.notify_all()

    def offer(self, data: bytes, *, force: bool = False) -> bool:
        """Send or queue a frame; without `force`, refuse it while the client is behind on reading."""
        with self.cond:
            if self.state != OPEN or (not force and self._out_bytes >= self._out_limit):
                return False
            if self._out or self._writing:
                self._queue(data)
                return True
            self._writing = True
        self._send_now(data)
        return True

    def put(self, data: bytes) -> None:
        """Send or queue a frame, waiting while the client is behind; raises once the connection ends."""
        with self.cond:
            while self._out_bytes >= self._out_limit and self.state == OPEN:
                self.cond.wait()
            if self.state != OPEN:
                raise ConnectionError("the connection is closing")
            if self._out or self._writing:
                self._queue(data)
                return
            self._writing = True
        self._send_now(data)

    def close_after(self, data: bytes) -> None:
        """Queue a last frame (an ERROR, a RECEIPT); the connection closes once it is sent. From any thread."""
        with self.cond:
            if self.state == OPEN:
                self._queue(data)
                self.state = CLOSING
                self.cond.notify_all()
                self._work.notify_all()
                self._wake_reader()

    def _wake_reader(self) -> None:
        """Make the reader look at the state and its deadlines again (holding `cond`, while OPEN)."""
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    # -- reading --------------------------------------------------------------------------------

    def _run(self) -> None:
        graceful = False
        try:
            if self._tls_sock is not None:
                self._handshake()
                self.handshake_done()
            graceful = self._read_loop()
        except (OSError, ValueError) as exc:
            log.debug("connection from %s failed: %s", self.peer, exc)
        except Exception as exc:
            if self.state != CLOSED:
                log.exception("connection from %s failed", self.peer)
            else:  # aborted: the TLS socket was shut down under its handshake
                log.debug("connection from %s ended: %r", self.peer, exc)
        finally:
            self._finish(graceful)

    def _read_loop(self) -> bool:
        """Read and handle frames until the connection ends; True when it is to close cleanly."""
        reader = FrameReader(self._max_frame)
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        connect_deadline = time.monotonic() + CONNECT_TIMEOUT
        while self._wait_for_room():
            if not (self._tls_sock is not None and self._tls_sock.pending()):
                ready = [fd for fd, _ in poller.poll(self._poll_ms(connect_deadline))]
                if self._wake in ready:
                    os.eventfd_read(self._wake)
                if self._sock.fileno() not in ready:
                    self._check_deadlines(connect_deadline)
                    continue
            try:
                with self._io_lock:
                    data = self._sock.recv(65536)
            except _WOULD_BLOCK:
                continue
            if not data:
                return False
            self._last_rx = time.monotonic()
            for item in reader.feed(data):
                if isinstance(item, FrameError):
                    self.fail(item.message, item.detail)
                else:
                    self.handle(item)
                if self.state != OPEN:
                    break
            if not reader.in_frame:
                self._frame_started = None
            elif self._frame_started is None:
                self._frame_started = self._last_rx
        return self.state == CLOSING

    def _deadlines(self, connect_deadline: float) -> list[float]:
        deadlines = [connect_deadline] if not self.connected else []
        if self.connected and self._expect_every:
            deadlines.append(self._last_rx + self._expect_every * HEARTBEAT_GRACE)
        if self._frame_started is not None:
            deadlines.append(self._frame_started + FRAME_TIMEOUT)
        if self._deadline is not None:
            deadlines.append(self._deadline[0])
        return deadlines

    def _poll_ms(self, connect_deadline: float) -> int | None:
        deadlines = self._deadlines(connect_deadline)
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _check_deadlines(self, connect_deadline: float) -> None:
        now = time.monotonic()
        if not self.connected and now >= connect_deadline:
            self.fail("CONNECT timeout", f"no CONNECT frame within {CONNECT_TIMEOUT:g} s")
        elif self._frame_started is not None and now >= self._frame_started + FRAME_TIMEOUT:
            self.fail("Frame timeout", f"a frame must arrive whole within {FRAME_TIMEOUT:g} s of its first byte")
        elif self.connected and self._expect_every and now - self._last_rx >= self._expect_every * HEARTBEAT_GRACE:
            self.fail("Heart-beat timeout", f"nothing received for {now - self._last_rx:.1f} s")
        elif self._deadline is not None and now >= self._deadline[0]:
            self.fail(*self._deadline[1:])

    def _wait_for_room(self) -> bool:
        with self.cond:
            if self._out_bytes >= self._out_limit:
                paused = time.monotonic()
                while self._out_bytes >= self._out_limit and self.state == OPEN:
                    self.cond.wait()
                self._last_rx = time.monotonic()  # the silence was ours, not the client's
                if self._frame_started is not None:  # and so was the wait for the rest of a frame
                    self._frame_started += self._last_rx - paused
            return self.state == OPEN

    def _handshake(self) -> None:
        assert isinstance(self._sock, ssl.SSLSocket)
        poller = select.poll()
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                with self._io_lock:
                    self._sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                wanted = select.POLLIN
            except ssl.SSLWantWriteError:
                wanted = select.POLLOUT
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.state != OPEN:
                raise TimeoutError("the TLS handshake did not complete in time")
            poller.register(self._sock, wanted)
            poller.poll(remaining * 1000)

    # -- writing --------------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        self._work.notify_all()

    def _send_now(self, data: bytes) -> None:
        """Send what the socket takes without waiting; the writer sends the rest (we hold `_writing`)."""
        sent = 0
        try:
            with self._io_lock:
                sent = self._sock.send(data)
        except _WOULD_BLOCK:
            pass
        except OSError as exc:
            log.debug("writing to %s failed: %s", self.peer, exc)
            self.abort()
        with self.cond:
            self._writing = False
            self._last_tx = time.monotonic()
            if sent < len(data) and self.state != CLOSED:
                self._out.insert(0, data[sent:])
                self._out_bytes += len(data) - sent
            if self._out or self._writer_waits:
                self._writer_waits = False
                self._work.notify_all()

    def _write_loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        try:
            while (data := self._next_to_write()) is not None:
                try:
                    self._write(data, poller)
                finally:
                    with self.cond:
                        self._writing = False
                        self._last_tx = time.monotonic()
        except (OSError, ValueError) as exc:
            log.debug("writing to %s failed: %s", self.peer, exc)
            self.abort()

    def _next_to_write(self) -> bytes | None:
        """What to send next (the queue, or a heart-beat when due); None once the connection ends."""
        with self.cond:
            while True:
                if self.state == CLOSED:
                    return None
                if self._writing:
                    self._writer_waits = True
                    self._work.wait()
                    continue
                if self._out:
                    data = b"".join(self._out)
                    self._out.clear()
                    self._out_bytes = 0
                    self._writing = True
                    self.cond.notify_all()  # room for the reader and the pushers
                    return data
                if self.state == CLOSING:
                    self._shutdown(socket.SHUT_WR)
                    return None
                wait = None
                if self._send_every:
                    wait = self._last_tx + self._send_every * HEARTBEAT_EARLY - time.monotonic()
                    if wait <= 0:
                        self._writing = True
                        return HEARTBEAT
                self._work.wait(wait)

    def _write(self, data: bytes, poller: select.poll) -> None:
        view = memoryview(data)
        progress = time.monotonic()
        while view:
            try:
                with self._io_lock:
                    sent = self._sock.send(view)
            except _WOULD_BLOCK:
                sent = 0
            now = time.monotonic()
            if sent:
                view = view[sent:]
                progress = now
                continue
            remaining = progress + (WRITE_STALL if self.state == OPEN else CLOSE_FLUSH) - now
            if remaining <= 0 or self.state == CLOSED:
                raise TimeoutError(f"the client took no data for {now - progress:.0f} s")
            poller.poll(remaining * 1000)

    # -- closing --------------------------------------------------------------------------------

    def _finish(self, graceful: bool) -> None:
        if not graceful:
            self.abort()
        self.ended()
        self._writer.join(WRITE_STALL + CLOSE_FLUSH)  # its own deadlines end it before this
        if graceful and self.state != CLOSED:
            self._linger()
        self._shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self.cond:  # no one writes to it once the state is not OPEN, as it is now
            os.close(self._wake)
            self._wake = -1
        log.debug("connection from %s closed", self.peer)
        self.closed()

    def _linger(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        deadline = time.monotonic() + LINGER
        while self.state != CLOSED and (remaining := deadline - time.monotonic()) > 0:
            if not poller.poll(remaining * 1000):
                continue
            try:
                with self._io_lock:
                    if not self._sock.recv(65536):
                        return
            except _WOULD_BLOCK:
                continue
            except OSError:
                return

    def _shutdown(self, how: int) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(how)
