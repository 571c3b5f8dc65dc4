"""What the event dispatcher's queue carries: one frozen dataclass per kind of news.

libvirt's callbacks (on the `libvirt-event-loop` thread), the connection and the verbs build
these and hand them to `EventDispatcher.put`; only the dispatcher's thread acts on them (see
`pier.host.events`). A new kind (a block job, a migration, a guest agent event) is a dataclass
here and one handler in `EventDispatcher`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class News:
    """Base of everything the dispatcher's queue carries."""


@dataclass(frozen=True)
class VmNews(News):
    """News about one VM. `when` (monotonic) is when it happened: news older than a verb's own
    change of the VM's status is published but does not undo that change."""

    vm_id: str
    when: float = field(default_factory=time.monotonic, kw_only=True)


@dataclass(frozen=True)
class Lifecycle(VmNews):
    """libvirt's lifecycle event: `event` is a VIR_DOMAIN_EVENT_* value, `detail` its reason."""

    name: str
    event: int
    detail: int


@dataclass(frozen=True)
class Reboot(VmNews):
    """The guest rebooted (libvirt's reboot event)."""

    name: str


@dataclass(frozen=True)
class DeviceRemoved(VmNews):
    """libvirt finished removing the device with this alias from a running VM."""

    name: str
    alias: str


@dataclass(frozen=True)
class AgentLifecycle(VmNews):
    """The VM's guest agent channel connected (`connected`) or disconnected; `reason` is libvirt's
    VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_* value."""

    name: str
    connected: bool
    reason: int


@dataclass(frozen=True)
class BlockJob(VmNews):
    """libvirt's block job event (BLOCK_JOB_2): the job on the drive with target `drive` (vda)
    changed; `job_type` is a VIR_DOMAIN_BLOCK_JOB_TYPE_*, `status` a VIR_DOMAIN_BLOCK_JOB_* value
    (completed, failed, canceled, ready)."""

    name: str
    drive: str
    job_type: int
    status: int


@dataclass(frozen=True)
class DevicesChanged(VmNews):
    """A verb changed the VM's devices, memory, CPUs or tuning; `hash` is its definition's new hash."""

    hash: str


@dataclass(frozen=True)
class StatusNews(VmNews):
    """A verb's announcement of a VDSM status (Powering down, or Up again after a shutdown gave
    up); libvirt's own events may overtake it."""

    status: str


@dataclass(frozen=True)
class Connected(News):
    """A libvirt connection opened: resync (`first`: the first since the agent started)."""

    first: bool


@dataclass(frozen=True)
class Disconnected(News):
    """The libvirt connection died: libvirt's close reason, or "error" when a call saw it."""

    reason: int | str


@dataclass(frozen=True, eq=False)
class Barrier(News):
    """Set `done` once everything queued before it is handled (held-back news published)."""

    done: threading.Event


@dataclass(frozen=True)
class Stop(News):
    """End the dispatcher's thread once everything queued before it is handled."""
