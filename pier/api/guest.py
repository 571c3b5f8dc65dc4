"""Handlers of the guest verbs: freeze and thaw, and VDSM's desktop verbs, through the guest agent."""

from __future__ import annotations

from pier.host.services import GuestService
from pier.rpc.registry import CallContext, verb


class GuestApi:
    def __init__(self, guest: GuestService) -> None:
        self._guest = guest

    @verb("VM.freeze")
    def freeze(self, ctx: CallContext, vmID: str) -> None:
        self._guest.freeze(vmID)

    @verb("VM.thaw")
    def thaw(self, ctx: CallContext, vmID: str) -> None:
        self._guest.thaw(vmID)

    @verb("VM.desktopLock")
    def desktop_lock(self, ctx: CallContext, vmID: str) -> None:
        self._guest.desktop_lock(vmID)

    @verb("VM.desktopLogin")
    def desktop_login(self, ctx: CallContext, vmID: str, domain: str, username: str, password: str) -> None:
        self._guest.desktop_unsupported(vmID, "log a user in to the desktop")

    @verb("VM.desktopLogoff")
    def desktop_logoff(self, ctx: CallContext, vmID: str, force: bool = False) -> None:
        self._guest.desktop_unsupported(vmID, "log the desktop's user off")

    @verb("VM.desktopSendHcCommand")
    def desktop_send_hc_command(self, ctx: CallContext, vmID: str, message: str) -> None:
        self._guest.desktop_unsupported(vmID, "send a health-check command to the desktop")
