"""Pier's one family of errors.

Each error carries VDSM's numeric code and name (so VDSM clients see what they always saw), a
human message, the HTTP status the REST facade answers with, and optional structured `data`.
Code anywhere in Pier raises these; only a transport's single error mapper turns one into wire
form. JSON-RPC protocol errors keep their standard codes (-32700 ... -32603).
"""

from __future__ import annotations

from typing import Any


class PierError(Exception):
    """Base of every error a caller may see. Subclasses set `code`, `name`, `message`."""

    code: int = 16
    name: str = "unexpected"
    message: str = "Unexpected exception"
    http_status: int = 500

    def __init__(self, message: str | None = None, *, data: Any = None) -> None:
        if message is not None:
            self.message = message
        self.data = data
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The error as a plain mapping: code, name, message and data when present."""
        out: dict[str, Any] = {"code": self.code, "name": self.name, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


# -- JSON-RPC protocol errors (standard codes) ---------------------------------------------


class ParseError(PierError):
    code, name, message, http_status = -32700, "ParseError", "Parse error", 400


class InvalidRequest(PierError):
    code, name, message, http_status = -32600, "InvalidRequest", "Invalid request", 400


class MethodNotFound(PierError):
    code, name, message, http_status = -32601, "MethodNotFound", "Method not found", 404


class InvalidParams(PierError):
    code, name, message, http_status = -32602, "InvalidParams", "Invalid params", 400


class InternalError(PierError):
    code, name, message, http_status = -32603, "InternalError", "Internal error", 500


class RequestTooLarge(PierError):
    code, name, message, http_status = -32600, "RequestTooLarge", "Request too large", 413


class Unauthenticated(PierError):
    """No credentials, or credentials that prove nothing (codes from JSON-RPC's server range)."""

    code, name, message, http_status = -32001, "unauthenticated", "Authentication required", 401


class Forbidden(PierError):
    code, name, message, http_status = -32003, "forbidden", "Not allowed for this caller", 403


class TargetBusy(PierError):
    code, name, message, http_status = -32009, "busy", "Busy with another operation", 409


class NoSuchCredential(PierError):
    code, name, message, http_status = -32004, "noSuchCredential", "No such token or certificate", 404


class NoSuchDevice(PierError):
    """A host device or network interface this host does not have (VDSM has no code for it)."""

    code, name, message, http_status = -32005, "noSuchDevice", "No such device on this host", 404


class DataRefused(PierError):
    """The endpoint serving a data route's bytes refused the request (an expired ticket, a range
    beyond the size): its HTTP status is passed on."""

    code, name, message, http_status = -32010, "dataRefused", "The data endpoint refused the request", 409


class TooManyRequests(PierError):
    code, name, message, http_status = -32029, "tooManyRequests", "Too many requests", 429


# -- VDSM's errors ----------------------------------------------------------------------------


class NoVM(PierError):
    code, name, message, http_status = 1, "noVM", "Virtual machine does not exist", 404


class VMExists(PierError):
    code, name, message, http_status = 4, "exist", "Virtual machine already exists", 409


class VMDown(PierError):
    code, name, message, http_status = 6, "down", "Virtual machine is down", 409


class CreateError(PierError):
    code, name, message, http_status = 9, "createErr", "Error creating the requested VM", 422


class MissingParam(PierError):
    code, name, message, http_status = 11, "MissParam", "Missing required parameter", 400


class ImageError(PierError):
    code, name, message, http_status = 13, "imageErr", "Drive image file could not be found", 422


class GuestTimeout(PierError):
    code, name, message, http_status = 19, "nonresp", "Guest did not respond in time", 504


class Unexpected(PierError):
    code, name, message, http_status = 16, "unexpected", "Unexpected exception", 500


class Unavailable(PierError):
    code, name, message, http_status = 40, "unavail", "Resource unavailable", 503


class DestroyError(PierError):
    code, name, message, http_status = 42, "destroyErr", "Virtual machine destroy error", 409


class UnsupportedOperation(PierError):
    code, name, message, http_status = 75, "unsupportedOperationErr", "Operation not supported", 409


class NoSuchJob(PierError):
    code, name, message, http_status = 66, "NoSuchJob", "Job Id does not exists", 404


class HardwareInfoError(PierError):
    code, name, message, http_status = 57, "hwInfoErr", "Failed to read hardware information", 500


class JobNotDone(PierError):
    code, name, message, http_status = 68, "JobNotDone", "Job status is not done", 409


class MomError(PierError):
    code, name, message, http_status = 54, "momErr", "Failed to set mom policy", 501


# -- migration ----------------------------------------------------------------------------------


class NoConPeer(PierError):
    code, name, message, http_status = 10, "noConPeer", "Could not connect to peer VDS", 502


class MigrateError(PierError):
    code, name, message, http_status = 12, "migrateErr", "Fatal error during migration", 409


class MigrationInProgress(PierError):
    code, name, message, http_status = 51, "migInProgress", "Command not supported during migration", 409


class MigrationNotInProgress(PierError):
    code, name, message, http_status = 81, "migNotInProgress", "Migration not in progress", 409


class MigrateLimit(PierError):
    code, name, message, http_status = 82, "migrateLimit", "Incoming migration limit exceeded", 409


class KsmError(PierError):
    code, name, message, http_status = 71, "ksmErr", "Failed to update KSM values", 409


class SecretBadRequest(PierError):
    code, name, message, http_status = 72, "secretBadRequestErr", "Bad secret request", 422


class SecretRegisterError(PierError):
    code, name, message, http_status = 73, "secretRegisterErr", "Error registering Libvirt secret", 409


class SecretUnregisterError(PierError):
    code, name, message, http_status = 74, "secretUnregisterErr", "Error unregistering Libvirt secret", 409


class SnapshotError(PierError):
    code, name, message, http_status = 48, "snapshotErr", "Snapshot failed", 409


class MergeError(PierError):
    code, name, message, http_status = 52, "mergeErr", "Merge failed", 409


class ResizeError(PierError):
    code, name, message, http_status = 58, "resizeErr", "Wrong resize disk parameter", 422


class ReplicaError(PierError):
    code, name, message, http_status = 55, "replicaErr", "Drive replication error", 409


class ReplicationNotInProgress(PierError):
    code, name, message, http_status = 88, "ReplicationNotInProgress", "Replication not in progress.", 409


class FreezeError(PierError):
    code, name, message, http_status = 76, "freezeErr", "Unable to freeze guest filesystems", 409


class ThawError(PierError):
    code, name, message, http_status = 77, "thawErr", "Unable to thaw guest filesystems", 409


class HostdevDetachError(PierError):
    code, name, message, http_status = 83, "hostdevDetachErr", "Could not detach host device", 409


# -- a running VM's devices, memory, CPUs and tuning (VDSM's codes) ------------------------------


class ChangeDisk(PierError):
    code, name, message, http_status = 41, "changeDisk", "Failed to change disk image", 409


class HotplugDisk(PierError):
    code, name, message, http_status = 45, "hotplugDisk", "Failed to hotplug disk", 409


class HotunplugDisk(PierError):
    code, name, message, http_status = 46, "hotunplugDisk", "Failed to hotunplug disk", 409


class HotplugNic(PierError):
    code, name, message, http_status = 49, "hotplugNic", "Failed to hotplug NIC", 409


class HotunplugNic(PierError):
    code, name, message, http_status = 50, "hotunplugNic", "Failed to hotunplug NIC", 409


class BalloonError(PierError):
    code, name, message, http_status = 53, "balloonErr", "Balloon operation is not available", 409


class UpdateDevice(PierError):
    code, name, message, http_status = 56, "updateDevice", "Failed to update device", 409


class SetNumberOfCpus(PierError):
    code, name, message, http_status = 60, "setNumberOfCpusErr", "Failed to set the number of cpus", 409


class CpuTuneError(PierError):
    code, name, message, http_status = 62, "cpuTuneErr", "CpuTune operation is not available", 409


class UpdateVmPolicy(PierError):
    code, name, message, http_status = 63, "updateVmPolicyErr", "Failed to update VM SLA policy", 409


class UpdateIoTune(PierError):
    code, name, message, http_status = 64, "updateIoTuneErr", "Failed to update ioTune values", 409


class HotplugMemory(PierError):
    code, name, message, http_status = 70, "hotplugMem", "Failed to hotplug memory", 409


class Recovering(PierError):
    code, name, message, http_status = 99, "recovery", "Recovering from crash or Initializing", 503


class UnknownTask(PierError):
    code, name, message, http_status = 401, "UnknownTask", "Task id unknown", 404


class TaskCancelled(PierError):
    code, name, message, http_status = 411, "TaskAborted", "Task was aborted", 409


class EventsExpired(PierError):
    """The caller's cursor points before the oldest event still kept; `data` says which."""

    code, name, message, http_status = 1001, "eventsExpired", "Events were dropped", 410


class LibvirtUnavailable(Unavailable):
    """libvirtd cannot be reached right now; the call may be retried."""

    message = "libvirtd is not reachable"



# -- storage ----------------------------------------------------------------------------------
# VDSM's storage error codes and names (lib/vdsm/storage/exception.py). Two helpers add here:
# each keeps its own block grouped and alphabetical.

# storage: connections, domains, pools (the "domains" helper)


class AcquireLockFailure(PierError):
    code, name, message, http_status = 651, "AcquireLockFailure", "Cannot obtain lock", 409


class BackupCannotBeMasterDomain(PierError):
    code, name, http_status = 319, "BackupCannotBeMasterDomain", 409
    message = "Backup domain cannot be a master storage domain"


class CannotConnectMultiplePools(PierError):
    code, name, http_status = 323, "CannotConnectMultiplePools", 409
    message = "Cannot connect pool, already connected to another pool"


class CannotDetachMasterStorageDomain(PierError):
    code, name, message, http_status = 383, "CannotDetachMasterStorageDomain", "Illegal action", 409


class CannotFormatAttachedStorageDomain(PierError):
    code, name, http_status = 391, "CannotFormatAttachedStorageDomain", 409
    message = "Cannot format attached storage domain"


class CannotFormatStorageDomainInConnectedPool(PierError):
    code, name, http_status = 392, "CannotFormatStorageDomainInConnectedPool", 409
    message = "Cannot format storage domain in connected pool"


class InvalidParameterException(PierError):
    code, name, message, http_status = 1000, "InvalidParameterException", "Invalid parameter", 422


class IsoCannotBeMasterDomain(PierError):
    code, name, http_status = 317, "IsoCannotBeMasterDomain", 409
    message = "ISO domain cannot be a master storage domain"


class MetaDataSealIsBroken(PierError):
    code, name, message, http_status = 752, "MetaDataSealIsBroken", "Meta Data seal is broken (checksum mismatch)", 500


class MetaDataValidationError(PierError):
    code, name, message, http_status = 753, "MetaDataValidationError", "Meta Data self-validation failed", 500


class MountError(PierError):
    code, name, message, http_status = 477, "MountError", "Problem while trying to mount target", 502


class SpmParamsMismatch(PierError):
    code, name, message, http_status = 652, "SpmParamsMismatch", "Pool previous lver/id don't match request", 409


class SpmStatusError(PierError):
    code, name, message, http_status = 654, "SpmStatusError", "Not SPM", 409


class StorageDomainActive(PierError):
    code, name, message, http_status = 382, "StorageDomainActive", "Illegal action, domain active", 409


class StorageDomainAlreadyAttached(PierError):
    code, name, http_status = 380, "StorageDomainAlreadyAttached", 409
    message = "Storage domain already attached to pool"


class StorageDomainAlreadyExists(PierError):
    code, name, message, http_status = 365, "StorageDomainAlreadyExists", "Storage domain already exists", 409


class StorageDomainCheckError(PierError):
    code, name, message, http_status = 377, "StorageDomainCheckError", "Domain has errors", 409


class StorageDomainClassError(PierError):
    code, name, message, http_status = 386, "StorageDomainClassError", "Invalid domain class value", 422


class StorageDomainDescriptionTooLongError(PierError):
    code, name, http_status = 387, "StorageDomainDescriptionTooLongError", 422
    message = "Storage domain description is too long"


class StorageDomainDoesNotExist(PierError):
    code, name, message, http_status = 358, "StorageDomainDoesNotExist", "Storage domain does not exist", 404


class StorageDomainFSNotMounted(PierError):
    code, name, message, http_status = 360, "StorageDomainFSNotMounted", "Storage domain remote path not mounted", 409


class StorageDomainIllegalRemotePath(PierError):
    code, name, message, http_status = 390, "StorageDomainIllegalRemotePath", "Remote path is illegal", 422


class StorageDomainMetadataNotFound(PierError):
    code, name, http_status = 364, "StorageDomainMetadataNotFound", 409
    message = "Storage domain invalid, metadata not found"


class StorageDomainNotActive(PierError):
    code, name, message, http_status = 369, "StorageDomainNotActive", "Storage domain not active", 409


class StorageDomainNotEmpty(PierError):
    code, name, http_status = 361, "StorageDomainNotEmpty", 409
    message = "Storage domain is not empty - requires cleaning"


class StorageDomainNotInPool(PierError):
    code, name, message, http_status = 353, "StorageDomainNotInPool", "Storage domain not in pool", 409


class StorageDomainTypeError(PierError):
    code, name, message, http_status = 372, "StorageDomainTypeError", "Unsupported Storage Domain type", 422


class StoragePoolAlreadyExists(PierError):
    code, name, http_status = 316, "StoragePoolAlreadyExists", 409
    message = "Error creating a storage pool - pool already exists"


class StoragePoolDescriptionTooLongError(PierError):
    code, name, http_status = 327, "StoragePoolDescriptionTooLongError", 422
    message = "Storage pool description is too long"


class StoragePoolMasterNotFound(PierError):
    code, name, message, http_status = 304, "StoragePoolMasterNotFound", "Cannot find master domain", 409


class StoragePoolNotConnected(PierError):
    code, name, message, http_status = 313, "StoragePoolNotConnected", "Storage pool not connected", 409


class StoragePoolUnknown(PierError):
    code, name, message, http_status = 309, "StoragePoolUnknown", "Unknown pool id, pool not connected", 404


class StoragePoolWrongMaster(PierError):
    code, name, message, http_status = 324, "StoragePoolWrongMaster", "Wrong Master domain or its version", 409


class StorageServerAccessPermissionError(PierError):
    code, name, http_status = 469, "StorageServerAccessPermissionError", 403
    message = "Permission settings on the specified path do not allow access to the storage"


class StorageServerConnectionError(PierError):
    code, name, message, http_status = 451, "StorageServerConnectionError", "Error storage server connection", 502


class StorageServerValidationError(PierError):
    code, name, http_status = 453, "StorageServerValidationError", 404
    message = "The specified path does not exist or cannot be reached"


class UnsupportedDomainVersion(PierError):
    code, name, http_status = 394, "UnsupportedDomainVersion", 422
    message = "Domain version is unsupported by this version of Pier"


# storage: volumes and images (the "volumes" helper)


class CopyImageError(PierError):
    code, name, message, http_status = 261, "CopyImageError", "low level Image copy failed", 500


class ImageSharingRefused(CopyImageError):
    """VDSM's CopyImageError for an image Image.upload/download cannot share (a chain), refused at the call."""

    http_status = 409


class ImageDoesNotExistInSD(PierError):
    code, name, message, http_status = 268, "ImageDoesNotExistInSD", "Image does not exist in domain", 404


class ImageTicketsError(PierError):
    code, name, message, http_status = 481, "ImageTicketsError", "Cannot communicate with image daemon", 503


class ImageDaemonError(PierError):
    code, name, message, http_status = 482, "ImageDaemonError", "Image daemon request failed", 502


class NoSuchImageTicket(ImageDaemonError):
    """What VDSM answered as ImageDaemonError with status 404: the ticket is not there."""

    http_status = 404


class ImageIsNotLegalChain(PierError):
    code, name, message, http_status = 262, "ImageIsNotLegalChain", "Image is not a legal chain", 409


class ImageVerificationError(PierError):
    code, name, message, http_status = 484, "ImageVerificationError", "Image verification failed", 422


class MissingOvfFileFromVM(PierError):
    code, name, message, http_status = 320, "MissingOvfFileFromVM", "Missing OVF file from VM", 404


class MoveImageError(PierError):
    code, name, message, http_status = 253, "MoveImageError", "Error moving image", 500


class NoSpaceLeftOnDomain(PierError):
    code, name, message, http_status = 397, "NoSpaceLeftOnDomain", "No space left on domain", 507


class PrepareIllegalVolume(PierError):
    code, name, message, http_status = 227, "prepareIllegalVolumeError", "Cannot prepare illegal volume", 409


class StorageUpdateVmError(PierError):
    code, name, message, http_status = 305, "StorageUpdateVmError", "Cannot update VM", 422


class VolumeAlreadyExists(PierError):
    code, name, message, http_status = 212, "VolumeAlreadyExists", "Volume already exists", 409


class VolumeCannotGetParent(PierError):
    code, name, message, http_status = 216, "VolumeCannotGetParent", "Cannot get parent volume", 422


class VolumeCopyError(PierError):
    code, name, message, http_status = 225, "VolumeCopyError", "Volume copy failed", 500


class VolumeCreationError(PierError):
    code, name, message, http_status = 205, "VolumeCreationError", "Error creating a new volume", 500


class VolumeDoesNotExist(PierError):
    code, name, message, http_status = 201, "VolumeDoesNotExist", "Volume does not exist", 404


class VolumeImageHasChildren(PierError):
    code, name, message, http_status = 204, "VolumeImageHasChildren", \
        "Cannot delete volume which has children (non-ethical)", 409


class VolumeIsBusy(PierError):
    code, name, message, http_status = 203, "VolumeIsBusy", "Volume is busy", 409


class VolumeMetadataReadError(PierError):
    code, name, message, http_status = 207, "VolumeMetadataReadError", "Error while processing volume meta data", 500


class VolumeMetadataWriteError(PierError):
    code, name, message, http_status = 208, "VolumeMetadataWriteError", "Error while updating volume meta data", 500


class VolumeResizeValueError(PierError):
    code, name, message, http_status = 232, "VolumeResizeValueError", "Incorrect size value for volume resize", 422


class VolumeSizeError(PierError):
    code, name, message, http_status = 229, "createVolumeSizeError", \
        "Requested size is too small. Must be larger or equal to 1", 422


# storage: block devices, LVM, iSCSI (the "blockdev" helper)


class BlockDeviceActionError(PierError):
    code, name, message, http_status = 600, "BlockDeviceActionError", "Error block device action", 500


class iSCSIDiscoveryError(PierError):  # noqa: N801 (VDSM's name)
    code, name, message, http_status = 475, "iSCSIDiscoveryError", "Failed discovery of iSCSI targets", 409


class VolumeGroupCreateError(PierError):
    code, name, message, http_status = 502, "VolumeGroupCreateError", "Cannot create Volume Group", 409


class VolumeGroupDoesNotExist(PierError):
    code, name, message, http_status = 506, "VolumeGroupDoesNotExist", "Volume Group does not exist", 404


class VolumeGroupRemoveError(PierError):
    code, name, message, http_status = 508, "VolumeGroupRemoveError", "Volume Group remove error", 409


# storage jobs (SDM.*) and NBD (the "jobs" helper)


class JobExists(PierError):
    code, name, message, http_status = 69, "JobExists", "Job id already exists", 409


class GenerationMismatch(PierError):
    code, name, message, http_status = 911, "GenerationMismatch", \
        "The provided generation does not match the actual generation", 409


class VolumeIsNotInChain(PierError):
    code, name, message, http_status = 920, "VolumeIsNotInChain", "Volume is not part of the chain", 422


class WrongParentVolume(PierError):
    code, name, message, http_status = 921, "WrongParentVolume", "Wrong parent volume", 422


class SharedVolumeNonWritable(PierError):
    code, name, message, http_status = 219, "SharedVolumeNonWritable", "Shared volume is not writable", 409


class InvalidVolumeUpdate(PierError):
    code, name, message, http_status = 235, "InvalidVolumeUpdate", "Invalid volume attribute update", 409


class GeneralStorageError(PierError):
    """What VDSM's storage jobs report for a failure of their tool (qemu-img, qemu-nbd)."""

    code, name, message, http_status = 100, "GeneralException", "General Exception", 500


class DestinationVolumeTooSmall(PierError):
    code, name, message, http_status = 79, "destVolumeTooSmall", "Destination volume is too small", 422


class StorageUnsupportedOperation(PierError):
    """VDSM's storage UnsupportedOperation (2009), apart from the virt one (75)."""

    code, name, message, http_status = 2009, "UnsupportedStorageOperation", "Operation not supported", 409


# -- backups and checkpoints (VDSM's codes) ------------------------------------------------------


class BackupError(PierError):
    code, name, message, http_status = 1600, "BackupError", "Backup Error", 409


class NoSuchBackupError(PierError):
    code, name, message, http_status = 1601, "NoSuchBackupError", "No such backup Error", 404


class CheckpointError(PierError):
    code, name, message, http_status = 1610, "CheckpointError", "Checkpoint Error", 409


class NoSuchCheckpointError(PierError):
    code, name, message, http_status = 1611, "NoSuchCheckpointError", "No such checkpoint Error", 404


class InconsistentCheckpointError(PierError):
    code, name, message, http_status = 1612, "InconsistentCheckpointError", "Inconsistent checkpoint Error", 409


def all_error_classes() -> list[type[PierError]]:
    """Every concrete error class, for the schema's `errors:` lists and generated docs."""
    found: list[type[PierError]] = []
    pending = [PierError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def error_by_name(name: str) -> type[PierError]:
    """The error class whose VDSM `name` (or Python class name) is `name`."""
    for cls in all_error_classes():
        if name in (cls.name, cls.__name__):
            return cls
    raise KeyError(name)
