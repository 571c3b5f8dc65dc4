"""Handlers of a VM's consoles and screen: tickets, screenshots, the serial console and VNC display."""

from __future__ import annotations

import base64
from typing import Any

from pier.host.services import ConsoleService
from pier.rpc.channels import Channel
from pier.rpc.errors import UnsupportedOperation
from pier.rpc.registry import CallContext, verb


class VmConsoleApi:
    def __init__(self, consoles: ConsoleService) -> None:
        self._consoles = consoles

    @verb("VM.setTicket")
    def set_ticket(self, ctx: CallContext, vmID: str, password: str, ttl: int,
                   existingConnAction: str = "disconnect", params: dict[str, str] | None = None) -> None:
        self._consoles.set_ticket(vmID, password, ttl, existingConnAction, (params or {}).get("graphicsType"))

    @verb("VM.screenshot")
    def screenshot(self, ctx: CallContext, vmID: str, screen: int = 0) -> dict[str, Any]:
        shot = self._consoles.screenshot(vmID, screen)
        return {"mimeType": shot["mimeType"], "width": shot["width"], "height": shot["height"],
                "data": base64.b64encode(shot["png"]).decode("ascii")}

    @verb("VM.serialConsole")
    def serial_console(self, ctx: CallContext, vmID: str, force: bool = False) -> Channel:
        _need_channel(ctx, f"/api/v1/vms/{vmID}/console")
        return self._consoles.open_console(vmID, force, holder=ctx.describe())

    @verb("VM.vncDisplay")
    def vnc_display(self, ctx: CallContext, vmID: str) -> Channel:
        _need_channel(ctx, f"/api/v1/vms/{vmID}/vnc")
        return self._consoles.open_display(vmID)


def _need_channel(ctx: CallContext, route: str) -> None:
    if not ctx.channel:
        raise UnsupportedOperation(f"this verb is a byte stream, which {ctx.transport} cannot carry: open a "
                                   f"WebSocket on GET {route} instead", data={"route": route})
