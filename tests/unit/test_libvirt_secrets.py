"""Host.registerSecrets and Host.unregisterSecrets through the real registry over a fake secret
service: the values reach the service and nothing else (log lines, audit log, events, answers)."""

from __future__ import annotations

import base64
import json
import logging
import uuid

import pytest

from pier.host.secrets import Secret
from pier.rpc.errors import InvalidParams, SecretBadRequest
from pier.rpc.schema import Schema
from tests.unit.conftest import Stack

VALUE = b"pier-unit-secret-6c1f0e7d"


def info(value: bytes = VALUE, **changes: str) -> dict[str, str]:
    return {"uuid": str(uuid.uuid4()), "usageType": "iscsi", "usageID": "iqn.2026-12.test:target",
            "password": base64.b64encode(value).decode(), **changes}


def test_the_schema_marks_the_password_secret(schema: Schema) -> None:
    assert schema.verbs["Host.registerSecrets"].secrets == ["password"]


def test_values_reach_the_service_and_nothing_else(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    kept = info()
    assert stack.call("Host.registerSecrets", secrets=[kept]) is True
    assert stack.secrets.values == {kept["uuid"]: VALUE}
    not_base64 = info(password="@" + VALUE.decode())
    with pytest.raises(InvalidParams) as refused:
        stack.call("Host.registerSecrets", secrets=[not_base64])
    assert refused.value.data["field"] == "params.secrets[0].password"
    stack.call("Host.unregisterSecrets", uuids=[kept["uuid"]])
    assert stack.secrets.values == {}

    audit = stack.audit.read(limit=100)
    assert [(entry["verb"], entry["outcome"]) for entry in audit["entries"]] == [
        ("Host.registerSecrets", "ok"), ("Host.registerSecrets", "InvalidParams"), ("Host.unregisterSecrets", "ok")]
    assert audit["entries"][0]["params"]["secrets"] == "***"  # a param named like a secret is redacted whole
    events, _ = stack.events.read(0)
    seen = [json.dumps(audit), json.dumps([event.as_dict() for event in events]), caplog.text,
            refused.value.message, json.dumps(refused.value.data)]
    for form in (VALUE.decode(), base64.b64encode(VALUE).decode()):
        assert not [text for text in seen if form in text]


def test_a_secret_never_shows_its_value() -> None:
    secret = Secret(0, info())
    assert secret.value == VALUE
    assert VALUE.decode() not in repr(secret) + str(secret) + secret.xml()
    with pytest.raises(SecretBadRequest) as refused:
        Secret(3, info(password="QUJD*"))
    assert refused.value.message == "secrets[3].password is not base64"
    with pytest.raises(SecretBadRequest, match=r"secrets\[0\].usageType"):
        Secret(0, info(usageType="tls"))
