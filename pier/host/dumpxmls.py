"""The libvirt domain XML of this host's VMs, as Host.dumpxmls gives them: without the secure
parts (a console's password), which libvirt leaves out unless asked for them."""

from __future__ import annotations

from collections.abc import Iterable

import libvirt

from pier.host.connection import Connection
from pier.host.domain import Domain, libvirt_errors


class DomainXmls:
    """Implements `pier.host.services.DomainXmlService` over libvirt."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def domain_xmls(self, vm_ids: Iterable[str] | None = None) -> dict[str, str]:
        """{vmId: XML} as libvirt has each now (the running guest's, or the definition of one that
        is off); NoVM for a VM that does not exist."""
        if vm_ids is not None:
            return {vm_id: self._xml(vm_id) for vm_id in vm_ids}
        conn = self._connection.get()
        xmls = {}
        with libvirt_errors(self._connection, conn, action="list the VMs"):
            domains = conn.listAllDomains(0)
        for dom in domains:
            try:
                xmls[dom.UUIDString()] = dom.XMLDesc(0)
            except libvirt.libvirtError as exc:
                self._connection.check(exc, conn)  # else it went away meanwhile
        return xmls

    def _xml(self, vm_id: str) -> str:
        domain = Domain.lookup(self._connection, vm_id)
        with domain.errors("read the XML of"):
            return str(domain.virdomain.XMLDesc(0))
