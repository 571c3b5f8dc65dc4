"""Handlers of the credential verbs (tokens, trusted certificates) and of the audit log."""

from __future__ import annotations

from typing import Any

from pier.rpc.audit import AuditLog
from pier.rpc.auth import Credentials
from pier.rpc.registry import CallContext, verb


class SecurityApi:
    def __init__(self, credentials: Credentials, audit: AuditLog) -> None:
        self._credentials = credentials
        self._audit = audit

    @verb("Host.getAuditLog")
    def audit_log(self, ctx: CallContext, after: int = 0, limit: int = 100, verb: str | None = None,
                  newest: bool = False, refused: bool = False) -> dict[str, Any]:
        return self._audit.read(after, limit, verb, newest, refused)

    @verb("Token.create")
    def create_token(self, ctx: CallContext, role: str, name: str = "",
                     expiresInDays: float | None = None) -> dict[str, Any]:
        return self._credentials.create_token(role, name, expiresInDays)

    @verb("Token.list")
    def list_tokens(self, ctx: CallContext) -> list[dict[str, Any]]:
        return self._credentials.list_tokens()

    @verb("Token.revoke")
    def revoke_token(self, ctx: CallContext, tokenID: str) -> None:
        self._credentials.revoke_token(tokenID)

    @verb("Trust.add")
    def trust(self, ctx: CallContext, certificate: str, role: str, name: str = "") -> dict[str, Any]:
        return self._credentials.trust(certificate, role, name)

    @verb("Trust.list")
    def list_trusted(self, ctx: CallContext) -> list[dict[str, Any]]:
        return self._credentials.list_trusted()

    @verb("Trust.remove")
    def distrust(self, ctx: CallContext, fingerprint: str) -> None:
        self._credentials.distrust(fingerprint)
