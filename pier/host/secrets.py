"""Libvirt secrets as VDSM's Host.registerSecrets and Host.unregisterSecrets manage them.

A secret is the password of a Ceph client, an iSCSI CHAP user or an encrypted volume, which
libvirt hands to QEMU. Pier defines each as a persistent (`ephemeral='no'`), private
(`private='yes'`: libvirt never gives its value back) secret, and marks the ones it registered
by starting their description with PIER_MARK, so that `clear` removes only those.

The values pass through here and go to libvirt only: no message, log line or answer holds one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.domain import libvirt_errors
from pier.host.domxml import normalize_uuid
from pier.rpc.errors import SecretBadRequest, SecretRegisterError, SecretUnregisterError

log = logging.getLogger(__name__)

PIER_MARK = "pier:"

# VDSM's SecretUsageType: the element under <usage> that holds the usageID.
USAGE_ELEMENTS = {"ceph": "name", "iscsi": "target", "volume": "volume"}


class Secret:
    """One secret to register, checked: its XML and its value (kept out of repr and str)."""

    def __init__(self, index: int, params: Mapping[str, Any]) -> None:
        field = f"params.secrets[{index}]"
        self.uuid = normalize_uuid(str(params.get("uuid", "")), f"secrets[{index}].uuid")
        self.usage_type = str(params.get("usageType", ""))
        if self.usage_type not in USAGE_ELEMENTS:
            raise SecretBadRequest(f"secrets[{index}].usageType: {self.usage_type!r} is not one of "
                                   f"{', '.join(USAGE_ELEMENTS)}", data={"field": f"{field}.usageType"})
        self.usage_id = str(params.get("usageID", ""))
        if not self.usage_id:
            raise SecretBadRequest(f"secrets[{index}].usageID is missing", data={"field": f"{field}.usageID"})
        self.description = str(params.get("description", ""))
        try:
            self._value = base64.b64decode(str(params.get("password", "")), validate=True)
        except (binascii.Error, ValueError):
            # The message says where, never what: the value stays out of every message.
            raise SecretBadRequest(f"secrets[{index}].password is not base64", data={"field": f"{field}.password"}) from None

    def __repr__(self) -> str:
        return f"Secret({self.uuid}, {self.usage_type}:{self.usage_id})"

    @property
    def value(self) -> bytes:
        return self._value

    def xml(self) -> str:
        root = ET.Element("secret", ephemeral="no", private="yes")
        ET.SubElement(root, "description").text = f"{PIER_MARK} {self.description}".rstrip()
        ET.SubElement(root, "uuid").text = self.uuid
        usage = ET.SubElement(root, "usage", type=self.usage_type)
        ET.SubElement(usage, USAGE_ELEMENTS[self.usage_type]).text = self.usage_id
        return ET.tostring(root, encoding="unicode")


class Secrets:
    """Implements `pier.host.services.SecretService` over libvirt's secret driver."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def register(self, secrets: Iterable[Mapping[str, Any]], clear: bool = False) -> None:
        """Define each secret and set its value (replacing a secret of the same UUID); with
        `clear`, undefine the Pier-registered secrets not among them. Every secret is checked
        before any is defined; when libvirt refuses one, those this call created are undefined."""
        checked = [Secret(index, params) for index, params in enumerate(secrets)]
        uuids = [secret.uuid for secret in checked]
        if len(set(uuids)) != len(uuids):
            twice = sorted({uuid for uuid in uuids if uuids.count(uuid) > 1})
            raise SecretBadRequest(f"secrets: {', '.join(twice)} given more than once", data={"uuids": twice})
        conn = self._connection.get()
        existing = set(self._uuids(conn))
        created: list[libvirt.virSecret] = []
        try:
            for secret in checked:
                with libvirt_errors(self._connection, conn, action=f"register secret {secret.uuid}",
                                    error=SecretRegisterError):
                    virsecret = conn.secretDefineXML(secret.xml())
                    if secret.uuid not in existing:
                        created.append(virsecret)
                    virsecret.setValue(secret.value)
        except SecretRegisterError:
            for virsecret in created:
                try:
                    virsecret.undefine()
                except libvirt.libvirtError as exc:
                    log.error("could not undefine secret %s after a failed registration: %s",
                              virsecret.UUIDString(), exc)
            raise
        log.info("registered secrets %s", ", ".join(repr(secret) for secret in checked) or "(none)")
        if clear:
            stale = [uuid for uuid in self._uuids(conn, pier_only=True) if uuid not in set(uuids)]
            self._undefine(conn, stale)

    def unregister(self, uuids: Iterable[str]) -> None:
        """Undefine the secrets of these UUIDs; one that does not exist is no error."""
        wanted = [normalize_uuid(uuid, f"uuids[{index}]") for index, uuid in enumerate(uuids)]
        self._undefine(self._connection.get(), wanted)

    def _undefine(self, conn: libvirt.virConnect, uuids: list[str]) -> None:
        for uuid in uuids:
            with libvirt_errors(self._connection, conn, action=f"unregister secret {uuid}",
                                error=SecretUnregisterError):
                try:
                    virsecret = conn.secretLookupByUUIDString(uuid)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                        continue
                    raise
                virsecret.undefine()
            log.info("unregistered secret %s", uuid)

    def _uuids(self, conn: libvirt.virConnect, *, pier_only: bool = False) -> list[str]:
        with libvirt_errors(self._connection, conn, action="list the secrets", error=SecretRegisterError):
            found = conn.listAllSecrets(0)
            return [virsecret.UUIDString() for virsecret in found
                    if not pier_only or _description(virsecret).startswith(PIER_MARK)]


def _description(virsecret: libvirt.virSecret) -> str:
    try:
        element = ET.fromstring(virsecret.XMLDesc(0)).find("description")
    except (libvirt.libvirtError, ET.ParseError):
        return ""
    return element.text or "" if element is not None else ""

