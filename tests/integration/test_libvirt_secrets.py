"""Libvirt secrets on the real libvirtd (qemu:///system): Host.registerSecrets and
Host.unregisterSecrets over every wire, and their values kept out of everything pierd writes.

One pierd at `--log-level DEBUG` registers secrets over WebSocket, HTTP JSON-RPC, REST, XML-RPC and
(when a broker answers) STOMP, and is refused a value that is not base64 and a usage another
secret holds; then its whole log, its state directory (the sqlite database with the audit log,
the events and the reply cache), the audit log and the events it serves, and every answer are
searched for each value, base64 and raw.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
import xml.etree.ElementTree as ET
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.clients import (
    CallFailed,
    HttpRpcClient,
    RestClient,
    StompClient,
    WsClient,
    http_request,
)
from tests.integration.conftest import BROKER, Pierd, broker_unreachable, start_stomp_pierd

USAGE_PREFIX = "pier-test/"


@pytest.fixture
def system() -> Iterator[libvirt.virConnect]:
    """qemu:///system, and at the end no secret of these tests left on it."""
    libvirt.registerErrorHandler(lambda *args: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        pytest.skip(f"qemu:///system is not reachable: {exc}")
    yield conn
    for virsecret in conn.listAllSecrets(0):
        if (virsecret.usageID() or "").startswith(USAGE_PREFIX):
            virsecret.undefine()
    conn.close()


def new_secret(description: str = "") -> tuple[dict[str, str], bytes]:
    """A SecretInfo with a fresh random value, and that value."""
    value = b"pier-secret-" + secrets.token_hex(16).encode()
    info = {"uuid": str(uuid.uuid4()), "usageType": "ceph", "usageID": f"{USAGE_PREFIX}{uuid.uuid4()}",
            "password": base64.b64encode(value).decode(), "description": description}
    return info, value


def forms(value: bytes) -> list[bytes]:
    return [value, base64.b64encode(value)]


def test_registered_secrets_are_persistent_private_and_marked(system: libvirt.virConnect, tmp_path: Path) -> None:
    pierd = Pierd(tmp_path / "state", "qemu:///system")
    try:
        client = WsClient(pierd.ws, pierd.token)
        first, _ = new_secret("ceph client of pool a")
        second, _ = new_secret()
        client.call("Host.registerSecrets", secrets=[first, second])
        xml = ET.fromstring(system.secretLookupByUUIDString(first["uuid"]).XMLDesc(0))
        assert (xml.get("ephemeral"), xml.get("private")) == ("no", "yes")
        assert xml.findtext("usage/name") == first["usageID"]
        assert xml.findtext("description") == "pier: ceph client of pool a"
        with pytest.raises(libvirt.libvirtError):
            system.secretLookupByUUIDString(first["uuid"]).value()  # private: libvirt gives it to no client

        foreign = system.secretDefineXML(f"<secret ephemeral='no' private='yes'><usage type='ceph'>"
                                         f"<name>{USAGE_PREFIX}foreign-{uuid.uuid4()}</name></usage></secret>")
        client.call("Host.registerSecrets", secrets=[second], clear=True)
        left = {virsecret.UUIDString() for virsecret in system.listAllSecrets(0)}
        assert second["uuid"] in left and foreign.UUIDString() in left  # clear leaves what Pier did not register
        assert first["uuid"] not in left

        client.call("Host.unregisterSecrets", uuids=[second["uuid"], str(uuid.uuid4())])
        assert second["uuid"] not in {virsecret.UUIDString() for virsecret in system.listAllSecrets(0)}
        client.close()
    finally:
        assert pierd.stop() == 0


def test_a_refused_registration_leaves_nothing_behind(system: libvirt.virConnect, tmp_path: Path) -> None:
    pierd = Pierd(tmp_path / "state", "qemu:///system")
    try:
        rest = RestClient(pierd.http, pierd.token)
        held, _ = new_secret()
        rest.call("Host.registerSecrets", secrets=[held])
        fresh, _ = new_secret()
        clash, _ = new_secret()
        clash["usageID"] = held["usageID"]  # libvirt keeps one secret per usage
        before = {virsecret.UUIDString() for virsecret in system.listAllSecrets(0)}
        with pytest.raises(CallFailed) as refused:
            rest.call("Host.registerSecrets", secrets=[fresh, clash])
        assert refused.value.code == 73 and clash["uuid"] in refused.value.message
        assert {virsecret.UUIDString() for virsecret in system.listAllSecrets(0)} == before
    finally:
        assert pierd.stop() == 0


def test_no_secret_value_is_logged_stored_published_or_answered(system: libvirt.virConnect, tmp_path: Path) -> None:
    state = tmp_path / "state"
    broker_down = broker_unreachable()
    extra = ("--log-level", "DEBUG")
    pierd = Pierd(state, "qemu:///system", *extra) if broker_down else start_stomp_pierd(state, "qemu:///system",
                                                                                          *extra)
    values: list[bytes] = []
    answers: list[str] = []
    registered: list[str] = []

    def register(call: object, *args: object) -> None:
        info, value = new_secret("leak test")
        values.append(value)
        registered.append(info["uuid"])
        answers.append(json.dumps(call(*args, [info]) if args else call([info]), default=str))  # type: ignore[operator]

    try:
        ws = WsClient(pierd.ws, pierd.token)
        register(lambda infos: ws.call("Host.registerSecrets", secrets=infos))
        register(lambda infos: HttpRpcClient(pierd.http, pierd.token).call("Host.registerSecrets", secrets=infos))
        register(lambda infos: RestClient(pierd.http, pierd.token).call("Host.registerSecrets", secrets=infos))
        with xmlrpc.client.ServerProxy(pierd.http + "/RPC2", allow_none=True,
                                       headers=[("Authorization", f"Bearer {pierd.token}")]) as vdsm:
            register(lambda infos: vdsm.registerSecrets(infos))
        if not broker_down:
            stomp = StompClient(BROKER, pierd.requests, token=pierd.token)
            register(lambda infos: stomp.call("Host.registerSecrets", secrets=infos))
            stomp.close()

        bad_value = b"pier-secret-" + secrets.token_hex(16).encode()
        values.append(bad_value)
        not_base64, _ = new_secret()
        not_base64["password"] = "@" + bad_value.decode()
        clash, clash_value = new_secret()
        values.append(clash_value)
        clash["usageID"] = system.secretLookupByUUIDString(registered[0]).usageID()
        for refused in (not_base64, clash):
            with pytest.raises(CallFailed) as raised:
                ws.call("Host.registerSecrets", secrets=[refused])
            answers.append(str(raised.value) + json.dumps(raised.value.data))
        answers.append(json.dumps(ws.call("Host.getAuditLog", limit=1000)))
        answers.append(http_request("GET", pierd.http + "/api/v1/events?after=0&wait=0")[2].decode())
        ws.call("Host.unregisterSecrets", uuids=registered)
        ws.close()
    finally:
        assert pierd.stop() == 0, "".join(pierd.log[-30:])

    assert len(values) == (7 if not broker_down else 6)
    log = "".join(pierd.log).encode()
    assert b"Host.registerSecrets" in log and b"DEBUG" in log
    files = {path: path.read_bytes() for path in state.rglob("*") if path.is_file()}
    assert any(path.name == "pier.db" for path in files)
    for value in values:
        for form in forms(value):
            assert form not in log, f"a secret's value is in pierd's log: {form!r}"
            for answer in answers:
                assert form.decode() not in answer, f"a secret's value is in an answer: {answer}"
            for path, data in files.items():
                assert form not in data, f"a secret's value is in {path}"
