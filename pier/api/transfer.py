"""Handlers of image transfer: VDSM's image tickets, and the REST data route of a volume."""

from __future__ import annotations

from typing import Any

from pier.host.services import TransferService
from pier.rpc.dataplane import HttpEndpoint
from pier.rpc.errors import UnsupportedOperation
from pier.rpc.registry import CallContext, verb

_DATA_ROUTE = "/api/v1/storage-domains/{sd}/images/{img}/volumes/{vol}/data"


class TransferApi:
    def __init__(self, transfers: TransferService) -> None:
        self._transfers = transfers

    @verb("Host.add_image_ticket")
    def add_image_ticket(self, ctx: CallContext, ticket: dict[str, Any]) -> None:
        self._transfers.add_ticket(ticket)

    @verb("Host.get_image_ticket")
    def get_image_ticket(self, ctx: CallContext, uuid: str) -> dict[str, Any]:
        return self._transfers.get_ticket(uuid)

    @verb("Host.extend_image_ticket")
    def extend_image_ticket(self, ctx: CallContext, uuid: str, timeout: int) -> None:
        self._transfers.extend_ticket(uuid, timeout)

    @verb("Host.remove_image_ticket")
    def remove_image_ticket(self, ctx: CallContext, uuid: str) -> None:
        self._transfers.remove_ticket(uuid)

    @verb("Volume.readData")
    def read_data(self, ctx: CallContext, storagedomainID: str, imageID: str, volumeID: str,
                  checksum: str | None = None) -> HttpEndpoint:
        _need_stream(ctx, "GET", storagedomainID, imageID, volumeID)
        return self._transfers.open_data(storagedomainID, imageID, volumeID, write=False, checksum=checksum)

    @verb("Volume.writeData")
    def write_data(self, ctx: CallContext, storagedomainID: str, imageID: str, volumeID: str) -> HttpEndpoint:
        _need_stream(ctx, "PUT", storagedomainID, imageID, volumeID)
        return self._transfers.open_data(storagedomainID, imageID, volumeID, write=True)


def _need_stream(ctx: CallContext, method: str, sd: str, img: str, vol: str) -> None:
    if not ctx.channel:
        route = _DATA_ROUTE.format(sd=sd, img=img, vol=vol)
        raise UnsupportedOperation(f"this verb moves a volume's bytes, which {ctx.transport} cannot carry: use "
                                   f"{method} {route}, or an image ticket", data={"route": route})
