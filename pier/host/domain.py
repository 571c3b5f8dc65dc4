"""One wrapper around a libvirt domain, and the one map from libvirt's errors to Pier's.

`libvirt_errors()` is the only place a libvirt error becomes a Pier error: a broken connection
is LibvirtUnavailable (and the connection is marked lost so it reconnects), a missing domain is
noVM, and with a domain at hand its state after the refusal is the evidence (gone: noVM, off:
down, a state the verb does not act from: unsupportedOperationErr); anything else is the
caller's error class with libvirt's code in `data`.

`Domain` gives the rest of Pier named operations on one domain, looked up by VM id: read, edit
and define its XML, find a device by alias, and attach, detach and update devices with the
flags the domain needs (the running guest and its persistent definition alike).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.devices import Device
from pier.host.domxml import DomainXml, normalize_uuid
from pier.host.vmstate import DOWN, error_text, state_status
from pier.rpc.errors import (
    InvalidParams,
    NoVM,
    PierError,
    Unexpected,
    UnsupportedOperation,
    VMDown,
)


@contextmanager
def libvirt_errors(connection: Connection, conn: libvirt.virConnect | None = None, *,
                   action: str, error: type[PierError] = Unexpected,
                   domain: libvirt.virDomain | None = None,
                   acts_on: Collection[str] | None = None) -> Iterator[None]:
    """Raise the Pier error for a libvirt error raised inside (see the module docstring).

    `conn` is the connection the calls use (a stale one is not marked lost); `action` says what
    was tried ("cannot {action}: ..."); `domain` and `acts_on` (the VDSM statuses the verb acts
    from) let the domain's state after a refusal decide the error."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise pier_error(exc, connection, conn, action=action, error=error, domain=domain,
                         acts_on=acts_on) from None


def pier_error(exc: libvirt.libvirtError, connection: Connection,
               conn: libvirt.virConnect | None = None, *, action: str,
               error: type[PierError] = Unexpected, domain: libvirt.virDomain | None = None,
               acts_on: Collection[str] | None = None) -> PierError:
    """The Pier error for `exc`; see `libvirt_errors`."""
    connection.check(exc, conn)  # raises LibvirtUnavailable for a broken connection
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NoVM("Virtual machine does not exist")
    if domain is not None:
        status = _current_status(domain)
        if status == DOWN:
            return VMDown("Virtual machine is down")
        if status is not None and (code == libvirt.VIR_ERR_OPERATION_INVALID
                                   or (acts_on is not None and status not in acts_on)):
            vm_id = domain.UUIDString()
            return UnsupportedOperation(
                f"cannot {action} while it is {status}: {error_text(exc)}",
                data={"vmId": vm_id, "status": status, "libvirtCode": code})
    return error(f"cannot {action}: {error_text(exc)}", data={"libvirtCode": code})


def _current_status(dom: libvirt.virDomain) -> str | None:
    """The domain's VDSM status as libvirt sees it now, or None when libvirt cannot say."""
    try:
        return state_status(*dom.state())[0]
    except libvirt.libvirtError:
        return None


class Domain:
    """One libvirt domain, by VM id; every libvirt error comes out as a Pier error."""

    def __init__(self, connection: Connection, conn: libvirt.virConnect,
                 dom: libvirt.virDomain) -> None:
        self._connection = connection
        self._conn = conn
        self._dom = dom
        self.vm_id = dom.UUIDString()

    @classmethod
    def lookup(cls, connection: Connection, vm_id: str) -> Domain:
        """The domain of VM `vm_id`: NoVM when libvirt has none, LibvirtUnavailable when
        libvirtd is away, InvalidParams when `vm_id` is not a UUID."""
        vm_id = normalize_uuid(vm_id)
        conn = connection.get()
        with libvirt_errors(connection, conn, action=f"look up VM {vm_id}"):
            return cls(connection, conn, conn.lookupByUUIDString(vm_id))

    @property
    def virdomain(self) -> libvirt.virDomain:
        """The libvirt object, for code that has no named operation here yet."""
        return self._dom

    def errors(self, action: str, error: type[PierError] = Unexpected,
               acts_on: Collection[str] | None = None, *,
               by_state: bool = True) -> AbstractContextManager[None]:
        """`libvirt_errors` for a call on this domain ("cannot {action} VM <id>: ..."); unless
        `by_state` is False, the domain's state after a refusal decides the error."""
        return libvirt_errors(self._connection, self._conn, action=f"{action} VM {self.vm_id}",
                              error=error, domain=self._dom if by_state else None,
                              acts_on=acts_on)

    # -- facts -----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        with self.errors("read the name of"):
            return str(self._dom.name())

    def is_active(self) -> bool:
        with self.errors("read the state of"):
            return bool(self._dom.isActive())

    def is_persistent(self) -> bool:
        with self.errors("read the state of"):
            return bool(self._dom.isPersistent())

    def status(self) -> tuple[str, dict[str, Any]]:
        """VDSM's status and its details (exit or pause reasons), as libvirt sees it now."""
        with self.errors("read the state of"):
            return state_status(*self._dom.state())

    def current_status(self) -> str | None:
        """VDSM's status as libvirt sees it now, or None when libvirt cannot say (to judge a
        refusal by)."""
        return _current_status(self._dom)

    # -- XML -------------------------------------------------------------------------------------

    def xml(self, *, inactive: bool = False) -> DomainXml:
        """The domain's XML: the running guest's, or (`inactive`, or when it is off) the
        persistent definition the next start uses."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with self.errors("read the XML of"):
            text = self._dom.XMLDesc(flags)
        return DomainXml.parse(text, "libvirt's domain XML")

    def define(self, xml: DomainXml, error: type[PierError] = Unexpected) -> None:
        """Make `xml` the domain's persistent definition (the running guest is not changed)."""
        if xml.uuid and normalize_uuid(xml.uuid, "xml uuid") != self.vm_id:
            raise InvalidParams(f"xml: <uuid> {xml.uuid} is not VM {self.vm_id}")
        with self.errors("define", error):
            self._dom = self._conn.defineXML(xml.to_string())

    def edit(self, change: Callable[[DomainXml], None],
             error: type[PierError] = Unexpected) -> DomainXml:
        """Read the persistent definition, let `change` edit it in place, define the result
        (what Pier does not model survives) and return it."""
        xml = self.xml(inactive=True)
        change(xml)
        self.define(xml, error)
        return xml

    # -- devices ---------------------------------------------------------------------------------

    def device(self, alias: str, *, inactive: bool = False) -> Device | None:
        """The device with this alias (in the running guest, or in the definition when
        `inactive` or off), or None."""
        if not alias:
            return None
        return next((d for d in self.xml(inactive=inactive).devices() if d.alias == alias), None)

    def affect_flags(self) -> int:
        """Which sides of the domain a device change applies to: the running guest (LIVE) and
        the definition the next start uses (CONFIG), as far as each exists."""
        with self.errors("read the state of"):
            active, persistent = self._dom.isActive(), self._dom.isPersistent()
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if active else 0
        if persistent:
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        return flags or libvirt.VIR_DOMAIN_AFFECT_CURRENT

    def attach(self, device: Device | str, error: type[PierError] = Unexpected,
               flags: int | None = None) -> None:
        """Add a device to the running guest and to the definition (or to the sides `flags` name)."""
        xml = device if isinstance(device, str) else _device_xml(device)
        flags = self.affect_flags() if flags is None else flags
        with self.errors("attach a device to", error):
            self._dom.attachDeviceFlags(xml, flags)

    def update(self, device: Device | str, error: type[PierError] = Unexpected,
               flags: int | None = None) -> None:
        """Change a device in place (matched by libvirt on its identity: alias, target, MAC)."""
        xml = device if isinstance(device, str) else _device_xml(device)
        flags = self.affect_flags() if flags is None else flags
        with self.errors("update a device of", error):
            self._dom.updateDeviceFlags(xml, flags)

    def detach(self, alias: str, error: type[PierError] = Unexpected, flags: int | None = None) -> None:
        """Ask libvirt to remove the device with this alias (from the sides `flags` name, by
        default both). From a running guest the removal may finish later, when the guest lets go
        of it: libvirt then sends a device-removed event (`pier.host.news.DeviceRemoved`)."""
        flags = self.affect_flags() if flags is None else flags
        with self.errors(f"detach device {alias} from", error):
            self._dom.detachDeviceAlias(alias, flags)


def _device_xml(device: Device) -> str:
    return ET.tostring(device.element, encoding="unicode")
