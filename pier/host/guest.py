"""What runs inside each VM, through its guest agent (qemu-guest-agent) and libvirt's agent API.

`GuestAgents` polls the agents and serves the guest verbs (`pier.host.services.GuestService`).

Polling never runs on a caller's path nor on the stats sampler's thread: the sampler hands
`poll()` the VMs that run, once per sample, and `poll()` only queues each VM whose poll is due
(never twice) for a small pool of `guest-agent-N` threads. Each poll asks libvirt one thing at a
time (`guestInfo` per group, `interfaceAddresses` from the agent), so an agent that lacks one
command still answers the others. A hung agent holds one worker for as long as libvirt waits
(libvirt 9.0 waits for ever for an agent that stopped answering, so the first poll of a VM sets
its agent response timeout, a live setting, to `AGENT_TIMEOUT`); a worker busy for longer than
`STUCK_AFTER` no longer counts, and the pool grows (up to `max_workers`) so that other VMs keep
being polled. A
VM whose agent is down or failed is asked again after `retry_interval`, or at once when libvirt
says its agent connected. `fields(vmId)` gives VDSM's guest fields of the last answers with
their ages (`guestAgentAges`: seconds since each group last answered).

`memoryStats` come from the balloon figures of the sampler's own bulk sample (`memory_stats`);
the guest's balloon driver reports them once `setMemoryStatsPeriod` is set, which the first
poll of a VM does.

Freeze and thaw go through libvirt's `fsFreeze`/`fsThaw`. qemu-guest-agent has no desktop
commands: `desktopLock` runs `loginctl lock-sessions` through the agent's guest-exec where the
agent allows it, the other desktop verbs are refused naming what is missing. A shutdown's
message is given to `wall` in the guest through guest-exec (`tell_users`). guest-exec is only
reachable through libvirt-qemu's `qemuAgentCommand`, which libvirt does not support for
commands that change what libvirt knows; running a program changes nothing libvirt tracks.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import libvirt

from pier.host.connection import Connection, is_connection_error
from pier.host.domain import Domain
from pier.host.guestinfo import TRANSLATE, copy_json
from pier.host.vmstate import error_text
from pier.rpc.errors import (
    FreezeError,
    GuestTimeout,
    PierError,
    ThawError,
    Unexpected,
    UnsupportedOperation,
)
from pier.rpc.threads import OwnedThread

log = logging.getLogger(__name__)

AGENT_CHANNEL = "org.qemu.guest_agent.0"
STUCK_AFTER = 10.0  # a worker in one poll this long is taken as stuck: others are started
MEMORY_STATS_PERIOD = 5  # seconds between the guest balloon driver's reports
EXEC_WAIT = 5.0  # how long a guest-exec may run before Pier stops waiting for its exit code
AGENT_TIMEOUT = 20  # s: libvirt's wait for any agent answer on a VM Pier polled (a freeze included)

# Groups polled, each on its own: (libvirt guestInfo type, or None for interfaceAddresses; fast?)
GROUPS: dict[str, tuple[int | None, bool]] = {
    "interfaces": (None, True),
    "users": (libvirt.VIR_DOMAIN_GUEST_INFO_USERS, True),
    "os": (libvirt.VIR_DOMAIN_GUEST_INFO_OS, False),
    "hostname": (libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME, False),
    "timezone": (libvirt.VIR_DOMAIN_GUEST_INFO_TIMEZONE, False),
    "filesystem": (libvirt.VIR_DOMAIN_GUEST_INFO_FILESYSTEM, False),
}
# Errors that say the agent is not there (not configured, not connected, not answering).
_AGENT_DOWN = {libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
               libvirt.VIR_ERR_AGENT_UNSYNCED}
CONNECTED, DISCONNECTED, UNKNOWN = "connected", "disconnected", "unknown"


class AgentDomain(Protocol):
    """The calls Pier makes on a libvirt domain for its guest agent (libvirt.virDomain has them;
    the unit tests' fake agent implements them too)."""

    def guestInfo(self, types: int = 0, flags: int = 0) -> dict[str, Any]: ...  # noqa: N802
    def interfaceAddresses(self, source: int, flags: int = 0) -> dict[str, Any]: ...  # noqa: N802
    def setMemoryStatsPeriod(self, period: int, flags: int = 0) -> int: ...  # noqa: N802
    def agentSetResponseTimeout(self, timeout: int, flags: int = 0) -> int: ...  # noqa: N802


# -- the poller ------------------------------------------------------------------------------------


@dataclass
class _Agent:
    """What Pier knows of one running VM's agent. `fields` is replaced, never changed in place."""

    state: str = UNKNOWN
    fields: dict[str, Any] = field(default_factory=dict)
    taken: dict[str, float] = field(default_factory=dict)  # group -> when it last answered
    due: dict[str, float] = field(default_factory=dict)  # group -> when to ask next
    retry_at: float = 0.0
    queued: bool = False
    frozen: bool = False
    period_set: bool = False


class GuestAgents:
    """The guest agents of this host's VMs: polled state and the guest verbs (see the module)."""

    def __init__(self, connection: Connection, *, workers: int = 2, max_workers: int = 8,
                 fast_interval: float = 10.0, slow_interval: float = 60.0,
                 retry_interval: float = 60.0) -> None:
        self._connection = connection
        self._base = workers
        self._max = max(workers, max_workers)
        self._intervals = {True: fast_interval, False: slow_interval}
        self._retry = retry_interval
        self._lock = threading.Lock()
        self._agents: dict[str, _Agent] = {}
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._workers: dict[str, OwnedThread] = {}
        self._busy: dict[str, float] = {}  # worker name -> when its current poll started
        self._numbers = iter(range(1, 1 << 30))
        self._running = False

    # -- owner -------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._running = True

    def stop(self) -> None:
        """End the workers; one stuck in libvirt is left behind after a short wait (daemon)."""
        with self._lock:
            self._running = False
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.join(1.0)

    # -- called by the sampler and the event dispatcher ---------------------------------------------

    def poll(self, vm_ids: Iterable[str]) -> None:
        """Queue the VMs (those that run) whose poll is due; forget the others. Never waits.
        Thread: stats-sampler."""
        now = time.monotonic()
        running = dict.fromkeys(vm_ids)  # in the caller's order
        with self._lock:
            for gone in [v for v in self._agents if v not in running]:
                del self._agents[gone]
            for vm_id in running:
                agent = self._agents.setdefault(vm_id, _Agent())
                if agent.queued or agent.frozen or now < agent.retry_at:
                    continue
                if agent.period_set and not self._due(agent, now):
                    continue
                agent.queued = True
                self._queue.put(vm_id)
            self._grow(now)

    def agent_changed(self, vm_id: str, connected: bool) -> None:
        """libvirt says the VM's agent connected or disconnected. Thread: libvirt-events."""
        with self._lock:
            agent = self._agents.setdefault(vm_id, _Agent())
            agent.state = CONNECTED if connected else DISCONNECTED
            agent.retry_at = 0.0 if connected else time.monotonic() + self._retry
            if connected:
                agent.due = {}
                agent.frozen = False
                if not agent.queued:
                    agent.queued = True
                    self._queue.put(vm_id)
                    self._grow(time.monotonic())

    def fields(self, vm_id: str) -> dict[str, Any]:
        """The VM's guest fields (the caller's own copy) with guestAgentState and guestAgentAges;
        {} for a VM Pier has not asked yet. Thread: any."""
        agent = self._agents.get(vm_id)
        if agent is None:
            return {}
        now = time.monotonic()
        out = copy_json(agent.fields)
        out["guestAgentState"] = agent.state
        out["guestAgentAges"] = {group: f"{now - when:.2f}" for group, when in agent.taken.items()}
        return out

    def state(self, vm_id: str) -> str:
        agent = self._agents.get(vm_id)
        return agent.state if agent is not None else UNKNOWN

    # -- the workers -------------------------------------------------------------------------------

    def _due(self, agent: _Agent, now: float) -> list[str]:
        return [g for g in GROUPS if agent.due.get(g, 0.0) <= now]

    def _grow(self, now: float) -> None:
        """Start a worker while fewer than `workers` are free to poll (held: self._lock)."""
        if not self._running:
            return
        stuck = sum(1 for since in self._busy.values() if now - since > STUCK_AFTER)
        while len(self._workers) - stuck < self._base and len(self._workers) < self._max:
            name = f"guest-agent-{next(self._numbers)}"
            worker = OwnedThread(name, functools.partial(self._work, name), wake=self._wake_one)
            self._workers[name] = worker
            worker.start()

    def _wake_one(self) -> None:
        self._queue.put(None)

    def _work(self, name: str) -> None:
        while True:
            with self._lock:
                worker = self._workers.get(name)
                if worker is None or worker.stopping.is_set():
                    return
            vm_id = self._queue.get()
            if vm_id is None:
                continue
            with self._lock:
                self._busy[name] = time.monotonic()
            try:
                self._poll_one(vm_id)
            except Exception:
                log.exception("VM %s: polling its guest agent failed", vm_id)
            finally:
                with self._lock:
                    self._busy.pop(name, None)
                    agent = self._agents.get(vm_id)
                    if agent is not None:
                        agent.queued = False
                    extra = len(self._workers) > self._base and self._queue.empty()
                    if extra:
                        self._workers.pop(name, None)  # started while another was stuck: not needed now
            if extra:
                return

    def _poll_one(self, vm_id: str) -> None:
        conn = self._connection.current()
        agent = self._agents.get(vm_id)
        if conn is None or agent is None:
            return
        try:
            dom: AgentDomain = conn.lookupByUUIDString(vm_id)
        except libvirt.libvirtError as exc:
            if is_connection_error(exc):
                self._connection.lost(conn)
            return
        if not agent.period_set:
            agent.period_set = True
            try:
                dom.setMemoryStatsPeriod(MEMORY_STATS_PERIOD, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:  # no balloon device, or the VM stopped
                log.debug("VM %s: no balloon statistics: %s", vm_id, error_text(exc))
            try:  # libvirt's default is to wait for ever for an agent that stopped answering
                dom.agentSetResponseTimeout(AGENT_TIMEOUT, 0)
            except libvirt.libvirtError as exc:
                log.debug("VM %s: cannot bound its agent's response time: %s", vm_id, error_text(exc))
        self.poll_domain(vm_id, dom)

    def poll_domain(self, vm_id: str, dom: AgentDomain) -> None:
        """Ask the agent of `dom` for each group that is due; keep what it answers."""
        agent = self._agents.get(vm_id)
        if agent is None:
            return
        now = time.monotonic()
        for group in self._due(agent, now):
            kind, fast = GROUPS[group]
            try:
                if kind is None:
                    answer = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
                else:
                    answer = dom.guestInfo(kind, 0)
            except libvirt.libvirtError as exc:
                if self._failed(vm_id, agent, group, exc):
                    return
                continue
            found = TRANSLATE[group](answer or {})
            with self._lock:
                agent.state = CONNECTED
                agent.fields = {**agent.fields, **found}
                agent.taken = {**agent.taken, group: time.monotonic()}
                agent.due[group] = time.monotonic() + self._intervals[fast]

    def _failed(self, vm_id: str, agent: _Agent, group: str, exc: libvirt.libvirtError) -> bool:
        """Note a failed call; True when the agent is away (stop asking it for now)."""
        code = exc.get_error_code()
        now = time.monotonic()
        if is_connection_error(exc) or code in _AGENT_DOWN or code == libvirt.VIR_ERR_OPERATION_INVALID:
            with self._lock:
                if code in _AGENT_DOWN:
                    agent.state = DISCONNECTED
                agent.retry_at = now + self._retry
            log.debug("VM %s: guest agent away: %s", vm_id, error_text(exc))
            return True
        with self._lock:  # the agent lacks this command (or failed it): ask again at the slow pace
            agent.due[group] = now + self._intervals[False]
        log.debug("VM %s: guest agent gave no %s: %s", vm_id, group, error_text(exc))
        return False

    # -- verbs ---------------------------------------------------------------------------------------

    def freeze(self, vm_id: str) -> int:
        """Freeze the guest's filesystems (fsFreeze); how many it froze."""
        dom = Domain.lookup(self._connection, vm_id)
        with dom.errors("freeze the filesystems of", FreezeError):
            try:
                frozen = int(dom.virdomain.fsFreeze(None, 0))
            except libvirt.libvirtError as exc:
                raise self._agent_error(exc, dom.vm_id, "freeze its filesystems", FreezeError) from None
        with self._lock:
            self._agents.setdefault(dom.vm_id, _Agent()).frozen = True
        return frozen

    def thaw(self, vm_id: str) -> int:
        """Thaw the guest's filesystems (fsThaw); how many it thawed."""
        dom = Domain.lookup(self._connection, vm_id)
        with dom.errors("thaw the filesystems of", ThawError):
            try:
                thawed = int(dom.virdomain.fsThaw(None, 0))
            except libvirt.libvirtError as exc:
                raise self._agent_error(exc, dom.vm_id, "thaw its filesystems", ThawError) from None
        with self._lock:
            agent = self._agents.get(dom.vm_id)
            if agent is not None:
                agent.frozen = False
        return thawed

    def desktop_lock(self, vm_id: str) -> None:
        """Lock the guest's sessions: `loginctl lock-sessions` through guest-exec."""
        code, err = self._exec(vm_id, "lock the desktop of", "loginctl", ["lock-sessions"])
        if code != 0:
            raise UnsupportedOperation(
                f"cannot lock the desktop of VM {vm_id}: `loginctl lock-sessions` failed in the guest "
                f"(exit code {code}){': ' + err if err else ''}", data={"vmId": vm_id, "exitCode": code})

    def desktop_unsupported(self, vm_id: str, what: str) -> None:
        """Refuse a desktop verb qemu-guest-agent cannot do, naming what is missing."""
        Domain.lookup(self._connection, vm_id)  # NoVM first
        raise UnsupportedOperation(
            f"cannot {what} in VM {vm_id}: qemu-guest-agent has no command for it (VDSM did it through "
            "ovirt-guest-agent, which Pier does not speak)", data={"vmId": vm_id, "missing": "ovirt-guest-agent"})

    def tell_users(self, vm_id: str, message: str) -> str:
        """Show `message` to the guest's users (`wall`, through guest-exec); never raises: what
        happened, in words, for the caller's progress."""
        try:
            code, err = self._exec(vm_id, "send a message to the users of", "wall", [], stdin=message)
        except PierError as exc:
            return f"the message did not reach the guest's users: {exc.message}"
        if code is None:
            return f"the message was given to wall in the guest, which had not ended after {EXEC_WAIT:g} s"
        if code != 0:
            return f"the message did not reach the guest's users: wall exited with {code} {err}".rstrip()
        return "the message was shown to the guest's users (wall)"

    # -- helpers ---------------------------------------------------------------------------------

    def _agent_error(self, exc: libvirt.libvirtError, vm_id: str, action: str,
                     error: type[PierError]) -> BaseException:
        """VDSM's error for a failed agent call: nonresp when the agent does not answer,
        unsupportedOperationErr when libvirt cannot, `error` when the VM has no agent channel;
        anything else goes back to `Domain.errors` (the libvirt error itself)."""
        self._connection.check(exc)
        code = exc.get_error_code()
        text = error_text(exc)
        data = {"vmId": vm_id, "libvirtCode": code}
        if code in (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED):
            return GuestTimeout(f"cannot {action}: the guest agent of VM {vm_id} does not answer "
                                f"(is qemu-guest-agent running in the guest?): {text}", data=data)
        if code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED:
            return error(f"cannot {action}: VM {vm_id} has no guest agent channel ({AGENT_CHANNEL}): {text}",
                         data=data)
        if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
            return UnsupportedOperation(f"cannot {action} in VM {vm_id}: {text}", data=data)
        return exc

    def _exec(self, vm_id: str, action: str, path: str, args: list[str],
              stdin: str | None = None) -> tuple[int | None, str]:
        """Run a program in the guest through guest-exec: (exit code or None if it did not end
        within EXEC_WAIT, the start of its stderr). Refused when the agent forbids guest-exec."""
        import libvirt_qemu  # type: ignore[import-untyped]  # only here: the rest of Pier uses libvirt's supported API alone

        dom = Domain.lookup(self._connection, vm_id)
        raw = dom.virdomain

        def command(execute: str, arguments: dict[str, Any] | None = None, doing: str = action,
                    error: type[PierError] = Unexpected) -> Any:
            request: dict[str, Any] = {"execute": execute}
            if arguments is not None:
                request["arguments"] = arguments
            with dom.errors(doing, error):
                try:
                    answer = libvirt_qemu.qemuAgentCommand(raw, json.dumps(request), 5, 0)
                except libvirt.libvirtError as exc:
                    raise self._agent_error(exc, dom.vm_id, f"{action} VM {dom.vm_id}",
                                            UnsupportedOperation) from None
            return json.loads(answer).get("return")

        info = command("guest-info") or {}
        enabled = {c.get("name") for c in info.get("supported_commands", []) if c.get("enabled")}
        if "guest-exec" not in enabled:
            raise UnsupportedOperation(
                f"cannot {action} VM {dom.vm_id}: its guest agent does not allow guest-exec (qemu-ga's "
                "--block-rpcs/--allow-rpcs, or an agent without it)", data={"vmId": dom.vm_id, "missing": "guest-exec"})
        spec: dict[str, Any] = {"path": path, "arg": args, "capture-output": True}
        if stdin is not None:
            spec["input-data"] = base64.b64encode(stdin.encode()).decode()
        # a program the guest does not have fails here ("Failed to execute child process")
        pid = (command("guest-exec", spec, f"run `{path}` in",
                       UnsupportedOperation) or {}).get("pid")
        deadline = time.monotonic() + EXEC_WAIT
        while pid is not None and time.monotonic() < deadline:
            status = command("guest-exec-status", {"pid": pid}) or {}
            if status.get("exited"):
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")[:200].strip()
                return int(status.get("exitcode", -1)), err
            time.sleep(0.05)
        return None, ""
