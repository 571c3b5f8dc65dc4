"""Handlers of the libvirt secrets verbs: Host.registerSecrets and Host.unregisterSecrets."""

from __future__ import annotations

from typing import Any

from pier.host.services import SecretService
from pier.rpc.registry import CallContext, verb


class SecretsApi:
    def __init__(self, secrets: SecretService) -> None:
        self._secrets = secrets

    @verb("Host.registerSecrets")
    def register(self, ctx: CallContext, secrets: list[dict[str, Any]], clear: bool = False) -> None:
        self._secrets.register(secrets, clear)

    @verb("Host.unregisterSecrets")
    def unregister(self, ctx: CallContext, uuids: list[str]) -> None:
        self._secrets.unregister(uuids)
