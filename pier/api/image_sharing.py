"""Handlers of VDSM's image sharing verbs, Image.upload and Image.download (pier/rpc/schema/imagesharing.yml).

Their prechecks refuse at the call what cannot work: an unknown pool, domain, image or volume
(VDSM's codes), an image of more than one volume, methodArgs other than an http(s) URL, and a
volume a running VM uses. The transfer itself runs in the task (pier.host.storage.sharing).
"""

from __future__ import annotations

from typing import Any

from pier.api.volume import VolumeApi
from pier.host.services import ImageSharingService
from pier.rpc.errors import CopyImageError
from pier.rpc.registry import CallContext, precheck, reconciler, verb


class ImageSharingApi:
    def __init__(self, sharing: ImageSharingService, volume_api: VolumeApi) -> None:
        self._sharing = sharing
        self._volume_api = volume_api

    def _allowed(self, methodArgs: dict[str, Any], storagepoolID: str, storagedomainID: str, imageID: str,
                 volumeID: str | None) -> str:
        vol = self._sharing.check(storagepoolID, storagedomainID, imageID, volumeID, methodArgs)
        self._volume_api.refuse_busy(storagedomainID, imageID, vol)
        return vol

    @precheck("Image.upload")
    def upload_allowed(self, ctx: CallContext, methodArgs: dict[str, Any], storagepoolID: str, storagedomainID: str,
                       imageID: str, volumeID: str | None = None) -> None:
        self._allowed(methodArgs, storagepoolID, storagedomainID, imageID, volumeID)

    @precheck("Image.download")
    def download_allowed(self, ctx: CallContext, methodArgs: dict[str, Any], storagepoolID: str,
                         storagedomainID: str, imageID: str, volumeID: str | None = None) -> None:
        self._allowed(methodArgs, storagepoolID, storagedomainID, imageID, volumeID)

    @verb("Image.upload")
    def upload(self, ctx: CallContext, methodArgs: dict[str, Any], storagepoolID: str, storagedomainID: str,
               imageID: str, volumeID: str | None = None) -> None:
        vol = self._allowed(methodArgs, storagepoolID, storagedomainID, imageID, volumeID)
        ctx.task.step("uploading", 0, f"uploading volume {vol}")
        self._sharing.upload(storagedomainID, imageID, vol, methodArgs, progress=ctx.task.progress,
                             cancelled=ctx.task.cancelled)

    @reconciler("Image.upload")
    def upload_done(self, params: dict[str, Any], step: str | None) -> bool:
        """An upload the agent's stop cut short is not retried: the other end holds part of it."""
        raise CopyImageError("the agent stopped during the upload; the URL may hold part of the volume: upload again")

    @verb("Image.download")
    def download(self, ctx: CallContext, methodArgs: dict[str, Any], storagepoolID: str, storagedomainID: str,
                 imageID: str, volumeID: str | None = None) -> None:
        vol = self._allowed(methodArgs, storagepoolID, storagedomainID, imageID, volumeID)
        ctx.task.step("downloading", 0, f"downloading into volume {vol}")
        self._sharing.download(storagedomainID, imageID, vol, methodArgs, progress=ctx.task.progress,
                               cancelled=ctx.task.cancelled)

    @reconciler("Image.download")
    def download_done(self, params: dict[str, Any], step: str | None) -> bool:
        """A download the agent's stop cut short left its volume ILLEGAL, holding part of the image."""
        if step is None:
            return False
        raise CopyImageError("the agent stopped during the download; the volume holds part of the image and is "
                             "left ILLEGAL: download again, or delete it")
