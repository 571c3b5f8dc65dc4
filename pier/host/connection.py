"""The libvirt connection: one process-wide event loop, and a connection that heals itself.

`EventLoop` runs libvirt's default event implementation on one thread
(`libvirt-event-loop`), shared by every `Connection` in the process and kept alive while at
least one of them is started. `Connection` opens the URI, registers the domain callbacks and
a close callback, and when the connection dies a `libvirt-reconnect` thread opens it again
with exponential backoff. Callbacks only hand news (`pier.host.news`) to `on_event`, which
must only enqueue. Broken connections are recognised by libvirt error code and domain, never by text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import libvirt

from pier.host.news import AgentLifecycle, BlockJob, Connected, DeviceRemoved, Disconnected, Lifecycle, News, Reboot
from pier.rpc.errors import LibvirtUnavailable, PierError
from pier.rpc.threads import OwnedThread

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_CAP = 5.0
KEEPALIVE = (1, 2)  # interval s, missed count: a hung libvirtd is noticed in ~3 s

EventSink = Callable[[News], None]
"""Receives Lifecycle, Reboot, DeviceRemoved, AgentLifecycle, BlockJob, Connected and Disconnected news."""


def silence_libvirt() -> None:
    """Stop libvirt from printing every error on stderr; callers branch on error codes."""
    libvirt.registerErrorHandler(lambda *args: None, None)


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` says the connection to libvirtd is gone (not that a call failed)."""
    if not isinstance(exc, libvirt.libvirtError):
        return False
    code, domain = exc.get_error_code(), exc.get_error_domain()
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN):
        return True
    return domain in (libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC) and code in (
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
    )


class EventLoop:
    """The single thread running `virEventRunDefaultImpl()`, reference counted."""

    THREAD_NAME = "libvirt-event-loop"
    _lock = threading.Lock()
    _registered = False
    _users = 0
    _thread: OwnedThread | None = None

    @classmethod
    def acquire(cls) -> None:
        """Register the default implementation (once per process) and run the loop."""
        with cls._lock:
            if not cls._registered:
                silence_libvirt()
                libvirt.virEventRegisterDefaultImpl()
                cls._registered = True
            cls._users += 1
            if cls._thread is None:
                thread = OwnedThread(cls.THREAD_NAME, lambda: cls._run(thread.stopping), wake=_wake_loop)
                cls._thread = thread
                thread.start()

    @classmethod
    def release(cls) -> None:
        """Drop one user; the last one stops the loop and joins its thread."""
        with cls._lock:
            cls._users = max(0, cls._users - 1)
            if cls._users or cls._thread is None:
                return
            thread, cls._thread = cls._thread, None
            thread.stop(2.0)

    @classmethod
    def call_soon(cls, fn: Callable[[], None]) -> bool:
        """Run `fn` on the loop thread after what the loop already has pending (False if
        no loop runs)."""
        if cls._thread is None:
            return False

        def fire(timer: int, opaque: Any) -> None:
            libvirt.virEventRemoveTimeout(timer)
            fn()

        libvirt.virEventAddTimeout(0, fire, None)
        return True

    @staticmethod
    def _run(stop: threading.Event) -> None:
        # A periodic timer bounds how long one iteration can block, so `stop` is seen soon.
        tick = libvirt.virEventAddTimeout(200, lambda timer, opaque: None, None)
        try:
            while not stop.is_set():
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:
                    log.exception("libvirt event loop iteration failed")
                    stop.wait(0.1)
        finally:
            libvirt.virEventRemoveTimeout(tick)


def _remove_timer(timer: int, opaque: Any) -> None:
    libvirt.virEventRemoveTimeout(timer)


def _wake_loop() -> None:
    """Make virEventRunDefaultImpl return now: a timer due at once."""
    libvirt.virEventAddTimeout(0, _remove_timer, None)


class Connection:
    """One libvirt connection that reconnects by itself; see the module docstring."""

    def __init__(self, uri: str, on_event: EventSink,
                 on_connect: Callable[[libvirt.virConnect], None] | None = None) -> None:
        self._uri = uri
        self._on_event = on_event
        self._on_connect = on_connect
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._dead: list[libvirt.virConnect] = []
        self._callback_ids: list[int] = []
        self._generation = 0
        self._need = threading.Event()
        self._stopping = threading.Event()
        self._thread: OwnedThread | None = None
        self._started = False

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def start(self) -> None:
        """Try to connect now; if libvirtd is away, keep trying in the background."""
        if self._started:
            return
        self._started = True
        EventLoop.acquire()
        self._stopping.clear()
        self._thread = OwnedThread("libvirt-reconnect", self._reconnect_loop, wake=self._need.set)
        self._thread.start()
        try:
            self._connect()
        except libvirt.libvirtError as exc:
            log.warning("cannot connect to %s yet (%s); retrying in the background",
                        self._uri, exc.get_error_message() or exc)
            self._need.set()

    def stop(self) -> None:
        """Stop reconnecting, drop the callbacks, close the connection, release the loop."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        if self._thread is not None:
            self._thread.stop(3.0)
            self._thread = None
        with self._lock:
            conn, self._conn = self._conn, None
            ids, self._callback_ids = self._callback_ids, []
            dead, self._dead = self._dead, []
        if conn is not None:
            self._close(conn, ids)
        for old in dead:
            self._close(old, [])
        EventLoop.release()

    def current(self) -> libvirt.virConnect | None:
        """The live connection, or None (for callers that can do without libvirt)."""
        return self._conn

    def get(self) -> libvirt.virConnect:
        """The live connection, or LibvirtUnavailable at once when there is none."""
        conn = self._conn
        if conn is None:
            raise LibvirtUnavailable(f"libvirtd is not reachable at {self._uri}")
        return conn

    def lost(self, conn: libvirt.virConnect | None = None) -> None:
        """Mark the connection dead (a call saw a connection error) and start reconnecting."""
        with self._lock:
            if self._conn is None or (conn is not None and conn is not self._conn):
                return
            self._dead.append(self._conn)
            self._conn = None
            self._callback_ids = []
        self._on_event(Disconnected("error"))
        self._need.set()

    def check(self, exc: libvirt.libvirtError, conn: libvirt.virConnect | None = None) -> None:
        """Raise LibvirtUnavailable if `exc` is a connection error (after marking it lost)."""
        if is_connection_error(exc):
            self.lost(conn)
            raise LibvirtUnavailable(
                f"lost the connection to libvirtd: {exc.get_error_message() or exc}"
            ) from None

    # -- internals ----------------------------------------------------------------------------

    def _connect(self) -> None:
        conn = libvirt.open(self._uri)
        ids: list[int] = []
        try:
            try:
                conn.setKeepAlive(*KEEPALIVE)
            except libvirt.libvirtError as exc:  # only the remote driver has keepalive
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            conn.registerCloseCallback(self._on_close, None)
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None))
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot, None))
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device_removed, None))
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_agent_lifecycle, None))
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_block_job, None))
            if self._on_connect is not None:
                self._on_connect(conn)
        except Exception:
            self._close(conn, ids)
            raise
        with self._lock:
            self._conn = conn
            self._callback_ids = ids
            self._generation += 1
            first = self._generation == 1
        log.info("connected to %s", self._uri)
        self._on_event(Connected(first))

    def _close(self, conn: libvirt.virConnect, ids: list[int]) -> None:
        for cb_id in ids:
            try:
                conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError:
                pass
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _reconnect_loop(self) -> None:
        while not self._stopping.is_set():
            self._need.wait()
            self._need.clear()
            with self._lock:
                dead, self._dead = self._dead, []
            for old in dead:
                self._close(old, [])
            delay = BACKOFF_START
            while self._conn is None and not self._stopping.is_set():
                try:
                    self._connect()
                except (libvirt.libvirtError, PierError) as exc:  # or on_connect on a bad link
                    log.debug("reconnect to %s failed: %s; next try in %.1fs",
                              self._uri, exc, delay)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, BACKOFF_CAP)
                except Exception:
                    log.exception("reconnect to %s failed; next try in %.1fs", self._uri, delay)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, BACKOFF_CAP)

    # -- libvirt callbacks: run on the libvirt-event-loop thread; they only enqueue ------------

    def _on_close(self, conn: libvirt.virConnect, reason: int, opaque: Any) -> None:
        """Thread: libvirt-event-loop."""
        with self._lock:
            if conn is not self._conn and self._conn is not None:
                return
            if self._conn is not None:
                self._dead.append(self._conn)
            self._conn = None
            self._callback_ids = []
        self._on_event(Disconnected(reason))
        self._need.set()

    def _on_lifecycle(self, conn: Any, dom: libvirt.virDomain, event: int, detail: int,
                      opaque: Any) -> None:
        """Thread: libvirt-event-loop."""
        self._on_event(Lifecycle(dom.UUIDString(), dom.name(), event, detail))

    def _on_reboot(self, conn: Any, dom: libvirt.virDomain, opaque: Any) -> None:
        """Thread: libvirt-event-loop."""
        self._on_event(Reboot(dom.UUIDString(), dom.name()))

    def _on_device_removed(self, conn: Any, dom: libvirt.virDomain, alias: str,
                           opaque: Any) -> None:
        """Thread: libvirt-event-loop."""
        self._on_event(DeviceRemoved(dom.UUIDString(), dom.name(), alias))

    def _on_agent_lifecycle(self, conn: Any, dom: libvirt.virDomain, state: int, reason: int,
                            opaque: Any) -> None:
        """Thread: libvirt-event-loop."""
        connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        self._on_event(AgentLifecycle(dom.UUIDString(), dom.name(), connected, reason))

    def _on_block_job(self, conn: Any, dom: libvirt.virDomain, drive: str, job_type: int, status: int,
                      opaque: Any) -> None:
        """Thread: libvirt-event-loop. BLOCK_JOB_2 names the drive by its target (vda), not its path."""
        self._on_event(BlockJob(dom.UUIDString(), dom.name(), drive, job_type, status))
