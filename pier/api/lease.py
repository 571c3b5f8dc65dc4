"""Handlers of the external lease verbs: none is served, since Pier holds no sanlock lockspace.

VDSM keeps external (VM and job) leases as sanlock resources in a domain's xleases volume. Pier's
SPM role is a host-local lock (sanlock's Python binding exists only for Debian's system Python),
so there is no lockspace to acquire a lease in; each verb answers unsupportedOperationErr saying so.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pier.rpc.errors import UnsupportedOperation
from pier.rpc.registry import CallContext, verb

NO_LOCKSPACE = ("Pier holds no sanlock lockspace (its SPM role is a host-local lock on the master domain's "
                "leases file), so it keeps no external leases (xleases)")


def _unsupported(what: str, sd_id: str) -> NoReturn:
    raise UnsupportedOperation(f"Operation not supported: {what}: {NO_LOCKSPACE}",
                               data={"sd_id": sd_id, "reason": "no sanlock lockspace"})


class LeaseApi:
    @verb("Lease.create")
    def create(self, ctx: CallContext, lease: dict[str, Any], metadata: dict[str, Any] | None = None) -> str:
        _unsupported(f"cannot create lease {lease['lease_id']}", lease["sd_id"])

    @verb("Lease.delete")
    def delete(self, ctx: CallContext, lease: dict[str, Any]) -> str:
        _unsupported(f"cannot delete lease {lease['lease_id']}", lease["sd_id"])

    @verb("Lease.info")
    def info(self, ctx: CallContext, lease: dict[str, Any]) -> dict[str, Any]:
        _unsupported(f"no info on lease {lease['lease_id']}", lease["sd_id"])

    @verb("Lease.status")
    def status(self, ctx: CallContext, lease: dict[str, Any]) -> dict[str, Any]:
        _unsupported(f"no status of lease {lease['lease_id']}", lease["sd_id"])

    @verb("Lease.fence")
    def fence(self, ctx: CallContext, lease: dict[str, Any], metadata: dict[str, Any]) -> None:
        _unsupported(f"cannot fence lease {lease['lease_id']}", lease["sd_id"])

    @verb("Lease.rebuild_leases")
    def rebuild(self, ctx: CallContext, sd_id: str) -> str:
        _unsupported(f"cannot rebuild the leases of domain {sd_id}", sd_id)
