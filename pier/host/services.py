"""What the verb handlers may ask of this host: one `typing.Protocol` per service.

`pier.api` handlers are typed against these, `pier.host` implements them (`Vms`, `HostInfo`), and
the unit tests' fakes (tests/fakes.py) implement them too; mypy checks all three against each other,
and the contract suite (tests/integration/test_contract.py) runs the same assertions on the fakes
and on the real services over libvirt's test driver.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pier.rpc.channels import Channel
from pier.rpc.dataplane import HttpEndpoint


class HostService(Protocol):
    """This host's identity, facts and figures."""

    def uuid(self) -> str:
        """The host's id (stable across restarts)."""
        ...

    def capabilities(self) -> dict[str, Any]:
        """VdsmCapabilities; what only libvirt knows is left out while libvirtd is away."""
        ...

    def hardware_info(self) -> dict[str, str]:
        """HardwareInformation (manufacturer, product, serial, UUID, ...)."""
        ...

    def stats(self) -> dict[str, Any]:
        """HostStats; never waits for libvirt."""
        ...


class VmService(Protocol):
    """The VMs of this host: reads answered from a cache, verbs that act through libvirt."""

    @property
    def connected(self) -> bool:
        """Whether libvirtd answers now."""
        ...

    def listing(self, vm_ids: Iterable[str] | None = None, full: bool = False) -> list[dict[str, Any]]:
        """{vmId, status} of each VM (only those of `vm_ids` when given); the full VmDefinition when `full`."""
        ...

    def definition(self, vm_id: str) -> dict[str, Any]:
        """VmDefinition with status, pid and exit details; NoVM when it does not exist."""
        ...

    def status(self, vm_id: str) -> str:
        """VDSM's status of the VM; NoVM when it does not exist."""
        ...

    def stats(self, vm_id: str) -> dict[str, Any]:
        """VmStats from the latest sample (a stub before the first)."""
        ...

    def all_stats(self) -> list[dict[str, Any]]:
        """VmStats of every VM from the latest sample; the caller may change what it gets."""
        ...

    def wait_status(self, vm_id: str, statuses: set[str], timeout: float,
                    cancelled: threading.Event | None = None) -> str | None:
        """Wait until the VM's status is one of `statuses` (it, then) or the timeout or a cancel (None)."""
        ...

    def create(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """Define and start a VM from vmParams; nothing stays defined on failure."""
        ...

    def destroy(self, vm_id: str) -> None:
        """Power the VM off if it runs and undefine it."""
        ...

    def poweroff(self, vm_id: str) -> None:
        """Power the VM off hard and keep it defined."""
        ...

    def shutdown(self, vm_id: str) -> None:
        """Ask the guest to power off (ACPI); returns at once."""
        ...

    def end_power_down(self, vm_id: str) -> None:
        """A shutdown gave up without the VM going down: it is Up again if libvirt says it runs."""
        ...

    def reboot(self, vm_id: str) -> None:
        """Ask the guest to reboot."""
        ...

    def reset(self, vm_id: str) -> None:
        """Reset the VM as a reset button would."""
        ...

    def pause(self, vm_id: str) -> dict[str, Any]:
        """Pause the VM; its VmDefinition after."""
        ...

    def cont(self, vm_id: str) -> dict[str, Any]:
        """Resume a paused VM; its VmDefinition after."""
        ...


class NetworkService(Protocol):
    """This host's network: facts and statistics (pier.host.network)."""

    def capabilities(self) -> dict[str, Any]:
        """VdsmNetworkCapabilities read from the kernel now, with the networks Pier made."""
        ...

    def statistics(self) -> dict[str, Any]:
        """HostNetworkStatistics from the latest sample; never scans the kernel per call."""
        ...

    def check(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]]) -> None:
        """What setup would refuse before changing anything, refused now (InvalidParams naming the field)."""
        ...

    def setup(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]],
              options: dict[str, Any], progress: Callable[[int, str], None] | None = None) -> None:
        """setupNetworks: the request merged into the running configuration, checked (InvalidParams
        naming the field), applied, and undone on failure or an unconfirmed connectivity check."""
        ...

    def confirm(self) -> None:
        """A connectivity check waiting for the caller ends well."""
        ...

    def save(self) -> None:
        """The running configuration becomes the safe one, restored when pierd starts."""
        ...


class KsmService(Protocol):
    """KSM's knobs under /sys/kernel/mm/ksm."""

    def tune(self, params: Mapping[str, int]) -> None:
        """Write the knobs named in `params`, all or none; KsmError naming the file otherwise."""
        ...


class LldpService(Protocol):
    """LLDP per NIC, from the LLDP agent running on this host (if any)."""

    def info(self, devices: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """{interface: Lldp} for `devices` (every NIC when None); NoSuchDevice for one that does not exist."""
        ...


class SecretService(Protocol):
    """Libvirt secrets (Ceph, iSCSI CHAP and volume passwords); their values are never given back."""

    def register(self, secrets: Iterable[Mapping[str, Any]], clear: bool = False) -> None:
        """Define each SecretInfo as a persistent, private secret with its value, all or none; with
        `clear`, also undefine the Pier-registered secrets not among them."""
        ...

    def unregister(self, uuids: Iterable[str]) -> None:
        """Undefine the secrets of these UUIDs; one that does not exist is no error."""
        ...


class HostDeviceService(Protocol):
    """The host's devices (libvirt's node devices), SR-IOV and assigning devices to VMs."""

    def list_by_caps(self, caps: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """{name: {"params": HostDeviceParams}} of the devices with one of `caps` (all when None)."""
        ...

    def change_numvfs(self, name: str, numvfs: int) -> None:
        """Give SR-IOV physical function `name` `numvfs` virtual functions."""
        ...

    def reattach(self, name: str) -> None:
        """Give device `name` back to its host driver if it is held for VMs."""
        ...

    def hotplug(self, vm_id: str, devices: list[str]) -> list[str]:
        """Assign the <hostdev> XMLs to the VM, all or none; the XMLs assigned."""
        ...

    def hotunplug(self, vm_id: str, devices: list[str]) -> list[str]:
        """Ask the VM to let go of the <hostdev> XMLs; the XMLs asked for."""
        ...


class DomainXmlService(Protocol):
    """The libvirt domain XML of this host's VMs."""

    def domain_xmls(self, vm_ids: Iterable[str] | None = None) -> dict[str, str]:
        """{vmId: domain XML} of `vm_ids` (every VM when None); NoVM for one that does not exist."""
        ...


class GuestService(Protocol):
    """What runs inside a VM, through its guest agent (pier.host.guest)."""

    def freeze(self, vm_id: str) -> int:
        """Freeze the guest's filesystems; how many. nonresp when its agent does not answer."""
        ...

    def thaw(self, vm_id: str) -> int:
        """Thaw the guest's filesystems; how many."""
        ...

    def desktop_lock(self, vm_id: str) -> None:
        """Lock the guest's desktop sessions, or unsupportedOperationErr naming what is missing."""
        ...

    def desktop_unsupported(self, vm_id: str, what: str) -> None:
        """Refuse a desktop verb the guest agent cannot do (`what`: e.g. "log a user in"); NoVM first."""
        ...

    def tell_users(self, vm_id: str, message: str) -> str:
        """Show a message to the guest's users; never raises: what happened, in words."""
        ...


class ConsoleService(Protocol):
    """A VM's display password, screen, serial console and VNC display (pier.host.console)."""

    def set_ticket(self, vm_id: str, password: str, ttl: int, connected: str,
                   graphics_type: str | None = None) -> None:
        """Set the password of the running VM's VNC/SPICE displays (those of `graphics_type` when
        given), valid `ttl` seconds (0: no expiry); `connected` (keep, disconnect, fail) says what
        happens to clients already connected. VMDown when it is not running; UnsupportedOperation
        when it has no such display."""
        ...

    def screenshot(self, vm_id: str, screen: int = 0) -> dict[str, Any]:
        """{mimeType: image/png, width, height, png: bytes} of the running VM's screen."""
        ...

    def open_console(self, vm_id: str, force: bool = False, holder: str = "") -> Channel:
        """The running VM's serial console; TargetBusy when another client has it, unless `force`
        takes it over (its channel then ends as taken over). `holder` names the caller."""
        ...

    def open_display(self, vm_id: str) -> Channel:
        """A byte channel to the running VM's VNC server (RFB; the client authenticates)."""
        ...


class VmDeviceService(Protocol):
    """A running VM's devices, memory, CPUs and tuning. Each change applies to the running guest
    and to the persistent definition together, is refused whole before anything changes when it
    cannot be done, and is in the VM's definition (VM.getInfo) when the call returns."""

    def devices(self, vm_id: str) -> list[dict[str, Any]]:
        """The VM's devices in VDSM's form."""
        ...

    def add_device(self, vm_id: str, device: dict[str, Any]) -> dict[str, Any]:
        """Plug in a disk, NIC or DIMM given in VDSM's device form; the device as now listed."""
        ...

    def remove_device(self, vm_id: str, alias: str) -> dict[str, Any]:
        """Unplug the device with this alias; the VmDefinition after."""
        ...

    def hotplug_disk(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Plug in params["drive"]; the VmDefinition after."""
        ...

    def hotunplug_disk(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Unplug the disk params["drive"] names (alias, name or path), waiting for the guest."""
        ...

    def change_cd(self, vm_id: str, spec: Any, floppy: bool = False) -> dict[str, Any]:
        """Put an image in the CD-ROM (floppy) drive, or eject with an empty path."""
        ...

    def hotplug_nic(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Plug in params["nic"]; the VmDefinition after."""
        ...

    def hotunplug_nic(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Unplug the NIC params["nic"] names (alias or macAddr), waiting for the guest."""
        ...

    def update_device(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """A NIC's link or network, a display's password, a CD's image."""
        ...

    def hotplug_memory(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Plug in a DIMM (params["memory"]: size MiB, node); up to the VM's maxMemSize."""
        ...

    def hotunplug_memory(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Unplug the DIMM params["memory"]["alias"] names, waiting for the guest."""
        ...

    def set_cpus(self, vm_id: str, count: int) -> dict[str, Any]:
        """Give the VM `count` vCPUs, up to its maxVCpus."""
        ...

    def set_balloon(self, vm_id: str, target_kib: int) -> None:
        """Ask the balloon to leave the guest `target_kib` KiB."""
        ...

    def set_io_tune(self, vm_id: str, tunables: list[dict[str, Any]]) -> None:
        """Set disks' I/O limits, all or none."""
        ...

    def io_tune(self, vm_id: str) -> list[dict[str, Any]]:
        """[{name, path, ioTune}] of the disks with limits."""
        ...

    def io_tune_policy(self, vm_id: str) -> list[dict[str, Any]]:
        """The I/O limits of the VM's SLA policy."""
        ...

    def all_io_tune_policies(self) -> dict[str, dict[str, Any]]:
        """{vmId: {policy, current_values}} of every running VM."""
        ...

    def set_cpu_tune(self, vm_id: str, period: int | None = None, quota: int | None = None) -> None:
        """The vCPUs' CFS period and/or quota."""
        ...

    def update_policy(self, vm_id: str, params: dict[str, Any]) -> None:
        """Keep the SLA policy (vcpuLimit, ioTune) and apply its CPU limit."""
        ...

    def set_destroy_on_reboot(self, vm_id: str) -> None:
        """A reboot of the VM powers it off."""
        ...

    def external_data(self, vm_id: str, kind: str, last_hash: str = "", force: bool = False) -> dict[str, Any]:
        """{data, hash} of the VM's TPM or NVRAM data."""
        ...


class StorageService(Protocol):
    """Storage connections, file domains, pools, the SPM role and the domain monitor."""

    def connect_storage_server(self, domain_type: int, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Connect each; [{id, status}] with 0 or VDSM's error code per connection."""
        ...

    def disconnect_storage_server(self, domain_type: int, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Disconnect each; [{id, status}]."""
        ...

    def domain_ids(self, pool: str | None = None, domain_class: str | None = None,
                   storage_type: str | int | None = None, remote_path: str | None = None) -> list[str]:
        """The ids of the domains found, or of those matching every filter given."""
        ...

    def listing(self) -> list[dict[str, Any]]:
        """Every domain with its info, validity (or error), space and whether it is monitored."""
        ...

    def connected_pools(self) -> list[str]:
        ...

    def repo_stats(self, domains: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The monitor's cached vitals of the watched domains (or of those named)."""
        ...

    def start_monitoring(self, sd_uuid: str, host_id: int) -> None:
        ...

    def stop_monitoring(self, sd_uuid: str) -> None:
        ...

    def create_domain(self, sd_uuid: str, domain_type: int | str, remote_path: str, name: str,
                      domain_class: int | str, version: int = 5, block_size: int = 512,
                      max_hosts: int = 2000) -> None:
        """Make a file domain on the connection to `remote_path`."""
        ...

    def check_create_domain(self, sd_uuid: str, domain_type: int | str, remote_path: str, name: str,
                            domain_class: int | str, version: int = 5, block_size: int = 512,
                            max_hosts: int = 2000) -> None:
        """Raise what create_domain would refuse, changing nothing."""
        ...

    def domain_info(self, sd_uuid: str) -> dict[str, Any]:
        ...

    def domain_stats(self, sd_uuid: str) -> dict[str, Any]:
        ...

    def domain_images(self, sd_uuid: str) -> list[str]:
        ...

    def validate_domain(self, sd_uuid: str) -> None:
        ...

    def set_domain_description(self, sd_uuid: str, description: str) -> None:
        ...

    def format_domain(self, sd_uuid: str, auto_detach: bool) -> None:
        ...

    def dump_domain(self, sd_uuid: str, full: bool = False) -> dict[str, Any]:
        ...

    def file_stats(self, sd_uuid: str, pattern: str, case_sensitive: bool) -> dict[str, dict[str, Any]]:
        ...

    def attach_domain(self, sd_uuid: str, sp_uuid: str) -> None:
        ...

    def detach_domain(self, sd_uuid: str, sp_uuid: str, force: bool = False) -> None:
        ...

    def activate_domain(self, sd_uuid: str, sp_uuid: str) -> None:
        ...

    def deactivate_domain(self, sd_uuid: str, sp_uuid: str) -> None:
        ...

    def create_pool(self, sp_uuid: str, name: str, master: str, master_version: int, domains: list[str],
                    lease_params: Mapping[str, int]) -> None:
        ...

    def connect_pool(self, sp_uuid: str, host_id: int, master: str, master_version: int,
                     domain_dict: Mapping[str, str] | None = None) -> None:
        ...

    def disconnect_pool(self, sp_uuid: str, host_id: int, remove: bool = False) -> None:
        ...

    def destroy_pool(self, sp_uuid: str, host_id: int) -> None:
        ...

    def pool_info(self, sp_uuid: str) -> dict[str, Any]:
        ...

    def refresh_pool(self, sp_uuid: str, master: str, master_version: int) -> None:
        ...

    def set_pool_description(self, sp_uuid: str, description: str) -> None:
        ...

    def spm_start(self, sp_uuid: str, prev_id: int, prev_lver: int) -> None:
        ...

    def spm_stop(self, sp_uuid: str) -> None:
        ...

    def spm_status(self, sp_uuid: str) -> dict[str, Any]:
        ...


Progress = Callable[[int, str], None]


class VolumeService(Protocol):
    """Volumes and images of file storage domains (pier.host.storage.images.PoolImages): VDSM's
    layout, made through qemu-img. Ids are UUID strings; sizes are VDSM's decimal strings of bytes.
    Errors carry VDSM's storage codes (StorageDomainDoesNotExist, VolumeDoesNotExist, ...)."""

    def check_pool(self, sp: str) -> None:
        """StoragePoolUnknown unless pool `sp` is connected (the blank UUID names none)."""
        ...

    def check_create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
                     parent_img: str, parent_vol: str) -> None:
        """What `create` would refuse, refused now, with nothing written."""
        ...

    def check_copy(self, sd: str, img: str, vol: str, dst_sd: str, dst_img: str, dst_vol: str) -> None:
        ...

    def check_delete(self, sd: str, img: str, vol: str) -> None:
        """VolumeImageHasChildren (or not found) when the volume cannot be deleted."""
        ...

    def check_extend(self, sd: str, img: str, vol: str, new_size: str) -> None:
        ...

    def check_move(self, sd: str, img: str, dst_sd: str) -> None:
        ...

    def create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
               disktype: str, description: str, parent_img: str, parent_vol: str, *,
               initial_size: str | None = None, legal: bool = True, sequence: int | None = None,
               progress: Progress = ...) -> str:
        """Make a volume (a qcow2 layer over `parent_vol` unless blank); nothing stays on failure."""
        ...

    def copy_volume(self, sd: str, img: str, vol: str, dst_sd: str, dst_img: str, dst_vol: str, description: str,
                    voltype: str, volume_format: str, preallocate: str, progress: Progress = ...,
                    cancelled: threading.Event | None = None) -> str:
        """The chain up to `vol` collapsed into a new volume."""
        ...

    def delete_volume(self, sd: str, img: str, vol: str, post_zero: bool = False, progress: Progress = ...,
                      cancelled: threading.Event | None = None) -> None:
        ...

    def extend_size(self, sd: str, img: str, vol: str, new_size: str) -> None:
        ...

    def info(self, sp: str, sd: str, img: str, vol: str) -> dict[str, Any]:
        """VolumeInfo."""
        ...

    def size(self, sd: str, img: str, vol: str) -> dict[str, str]:
        """VolumeSizeInfo."""
        ...

    def qemu_info(self, sd: str, img: str, vol: str) -> dict[str, Any]:
        """QemuImageInfo."""
        ...

    def measure(self, sd: str, img: str, vol: str, dst_format: str, backing_chain: bool = True,
                base: str | None = None) -> dict[str, int]:
        ...

    def set_description(self, sd: str, img: str, vol: str, description: str) -> None:
        ...

    def set_legality(self, sd: str, img: str, vol: str, legality: str) -> None:
        ...

    def verify_untrusted(self, sd: str, img: str, vol: str) -> None:
        ...

    def volume_path(self, sd: str, img: str, vol: str) -> str:
        """The volume's data file; VolumeDoesNotExist (and the like) when it is not there."""
        ...

    def volumes_of(self, sd: str, img: str) -> list[str]:
        """The volumes of an image (of the whole domain for the blank UUID)."""
        ...

    def volumes_of_any(self, sd: str, img: str) -> list[str]:
        """The volumes of an image; none when it is not there."""
        ...

    def chain_of(self, sd: str, img: str, vol: str) -> list[str]:
        """Base to `vol`."""
        ...

    def children_of(self, sd: str, img: str, vol: str) -> list[str]:
        ...

    def legality(self, sd: str, img: str, vol: str) -> str | None:
        """A volume's LEGALITY; None when it is not there or half made."""
        ...

    def remove_leftovers(self, sd: str, img: str | None = None) -> list[str]:
        """Remove what interrupted creates, copies and deletes left on the domain."""
        ...

    def leftover_images(self, sd: str) -> list[str]:
        """The images holding what remove_leftovers would remove."""
        ...

    def images_with(self, sp: str, img: str) -> list[str]:
        ...

    def prepare(self, sd: str, img: str, vol: str, allow_illegal: bool = False) -> dict[str, Any]:
        """PreparedImageInfo: the leaf's path and the chain, base first."""
        ...

    def teardown(self, sd: str, img: str, vol: str | None = None) -> None:
        ...

    def delete_image(self, sd: str, img: str, post_zero: bool = False, progress: Progress = ...,
                     cancelled: threading.Event | None = None) -> None:
        ...

    def delete_volumes(self, sd: str, img: str, vols: list[str], post_zero: bool = False,
                       progress: Progress = ..., cancelled: threading.Event | None = None) -> None:
        ...

    def move(self, sd: str, img: str, dst_sd: str, *, remove_source: bool, structure_only: bool = False,
             post_zero: bool = False, progress: Progress = ..., cancelled: threading.Event | None = None) -> None:
        ...

    def sync_data(self, sd: str, img: str, dst_sd: str, sync_type: str, progress: Progress = ...,
                  cancelled: threading.Event | None = None) -> None:
        ...

    def reconcile_chain(self, sd: str, img: str, leaf_vol: str) -> list[str]:
        ...

    def finalize_merge(self, sd: str, img: str, base: str, top: str) -> None:
        ...

    def record_capacity(self, sd: str, img: str, vol: str, size: int) -> None:
        """Write a volume's capacity (CAP) into its metadata only: QEMU grew the image itself."""
        ...

    def update_vms(self, sp: str, vms: list[dict[str, Any]], sd: str | None = None) -> None:
        ...

    def remove_vm(self, sp: str, vm: str, sd: str | None = None) -> None:
        ...

    def backed_up_vms(self, sp: str, sd: str) -> list[str]:
        ...

    def backed_up_vms_info(self, sp: str, sd: str, vms: list[str]) -> dict[str, str]:
        ...


class SnapshotService(Protocol):
    """Live snapshots, block commits and size changes of a running VM's disks
    (pier.host.snapshots). Disks are named by the paths of their volumes; errors are snapshotErr,
    mergeErr, resizeErr, or imageErr for a path no disk of the VM holds."""

    def chains(self, vm_id: str) -> dict[str, list[str]]:
        """Each disk of the running VM by target name, with its chain of paths (leaf first)."""
        ...

    def snapshot(self, vm_id: str, targets: list[Any], quiesce: bool, memory_path: str | None = None) -> dict[str, Any]:
        """Move each target's (pier.host.snapshots.SnapshotTarget) drive onto its new file, all or none,
        and save the guest's memory into `memory_path` in the same step when given;
        {"quiesce": whether the guest agent quiesced the guest}."""
        ...

    def snapshot_ended(self, vm_id: str, timeout: float) -> bool:
        """Wait up to `timeout` s for a snapshot libvirt still takes of the VM (after a restart) to end."""
        ...

    def after_snapshot(self, vm_id: str, done: Callable[[], Any]) -> None:
        """Call done() (in a thread) once the snapshot libvirt takes of the VM has ended."""
        ...

    def commit(self, vm_id: str, job_id: str, image: str, base_path: str, top_path: str, bandwidth: int,
               progress: Callable[[int, str], None], cancelled: threading.Event,
               leave: Callable[[], bool] = ...) -> bool | None:
        """Commit top into base and follow the job to its end; False when cancelled (nothing merged),
        None when cancelled while `leave()` (the agent stops: libvirt goes on, the next start follows)."""
        ...

    def where(self, vm_id: str, top_path: str, base_path: str) -> Any:
        """How far a merge got (pier.host.snapshots.MergeState), from libvirt's state."""
        ...

    def follow(self, vm_id: str, job_id: str, image: str, base_path: str, top_path: str,
               done: Callable[[bool], None]) -> None:
        """Follow a commit libvirt still runs (after a restart); then done(merged)."""
        ...

    def vm_jobs(self, vm_id: str) -> dict[str, dict[str, Any]]:
        """VDSM's vmJobs: the block jobs Pier runs or follows on the VM."""
        ...

    def resize(self, vm_id: str, path: str, size: int) -> None:
        """Tell QEMU the disk whose leaf is `path` has `size` bytes now."""
        ...


class ReplicationService(Protocol):
    """Live storage moves: block copies of a running VM's drive onto a volume of another domain
    (pier.host.replicate). Drives are named by their leaf's path; a copy in progress is libvirt's
    (found again after a restart). Errors: replicaErr, ReplicationNotInProgress, unavail (not
    ready to pivot), imageErr for a path no drive of the VM has as its leaf."""

    def chains(self, vm_id: str) -> dict[str, list[str]]:
        """Each disk of the running VM by target name, with its chain of paths (leaf first)."""
        ...

    def replicas(self, vm_id: str) -> dict[str, Any]:
        """The VM's drives being copied (pier.host.replicate.Replica), by target name."""
        ...

    def start(self, vm_id: str, source: str, dest: str, fmt: str) -> Any:
        """Copy the drive whose leaf is `source` onto the existing file `dest`; the Replica."""
        ...

    def finish(self, vm_id: str, source: str, pivot: bool) -> Any:
        """Pivot onto the copy (when ready), or stop it; the Replica as it was."""
        ...

    def vm_jobs(self, vm_id: str) -> dict[str, dict[str, Any]]:
        """VDSM's vmJobs entries of the VM's copies."""
        ...

    def on_copy_ended(self, listener: Callable[[Any], None]) -> None:
        """Call `listener` with a pier.host.replicate.CopyEnded for each copy that ends without
        `finish` (libvirt failed it, or it was pivoted or aborted outside Pier)."""
        ...


class MemoryStateService(Protocol):
    """A running VM's memory state in a file (pier.host.hibernation): VM.hibernate saves it, VM.create
    with restoreState brings the VM back from it (or from a memory snapshot's)."""

    def domain_xml(self, vm_id: str) -> str:
        """The running VM's domain XML as a restore needs it; down when it does not run."""
        ...

    def save(self, vm_id: str, path: str, progress: Callable[[int, str], None],
             cancelled: threading.Event, down_timeout: float = ...) -> dict[str, Any]:
        """Save the running VM's state into `path` and stop it (Saving State, then Down with
        "SaveState succeeded"); on failure or cancel it runs on as it was."""
        ...

    def save_ended(self, vm_id: str, timeout: float) -> bool:
        """Whether libvirt's save job on the VM has ended (the VM reported Up or Down), waiting up to
        `timeout` s; NoVM when it is gone."""
        ...

    def saved_xml(self, path: str) -> str:
        """The domain XML a saved state (or memory snapshot) in `path` was taken with."""
        ...

    def restore(self, vm_id: str, xml: str, path: str) -> dict[str, Any]:
        """Define the VM from `xml` and bring it back from the state in `path` (Restoring state,
        then Up); its VmDefinition. Nothing stays defined on failure."""
        ...


class BlockDeviceService(Protocol):
    """This host's block devices and LVM volume groups (read only: block domains are not served)."""

    def devices(self, guids: Iterable[str] | None = None, check_status: bool = True) -> list[dict[str, Any]]:
        """Disks and loop devices (those with a GUID in `guids`) with VDSM's BlockDeviceInfo fields."""
        ...

    def visibility(self, guids: Iterable[str]) -> dict[str, bool]:
        """Whether each GUID names a device this host has and can read."""
        ...

    def volume_groups(self) -> list[dict[str, Any]]:
        """The LVM volume groups on this host, with VDSM's VolumeGroupInfo fields."""
        ...

    def volume_group(self, vg_uuid: str) -> dict[str, Any]:
        """One volume group by UUID (or name); VolumeGroupDoesNotExist when there is none."""
        ...


JobStep = Callable[[str, int, str], None]
JobProgress = Callable[[int, str], None]


class StorageJobService(Protocol):
    """VDSM's SDM jobs on file-domain volumes (pier.host.storage.jobs.StorageJobs). Each `check_*`
    refuses what its job would refuse, changing nothing; a job saves a step `gen=<N>` before it
    marks or writes anything, which `reconcile` reads after a restart."""

    def check_copy(self, source: dict[str, Any], destination: dict[str, Any], copy_bitmaps: bool) -> None:
        ...

    def subchain(self, info: dict[str, Any]) -> Any:
        ...

    def check_update(self, vol_info: dict[str, Any], vol_attr: dict[str, Any]) -> None:
        ...

    def qcow2_volume(self, vol_info: dict[str, Any], why: str) -> Any:
        ...

    def check_bitmap(self, vol_info: dict[str, Any], name: str, *, adding: bool) -> None:
        ...

    def check_sparsify(self, vol_info: dict[str, Any]) -> Any:
        ...

    def reconcile(self, vol_info: dict[str, Any], step: str | None) -> bool:
        ...

    def copy_data(self, source: dict[str, Any], destination: dict[str, Any], copy_bitmaps: bool = False, *,
                  step: JobStep = ..., progress: JobProgress = ..., cancelled: threading.Event | None = None) -> None:
        ...

    def merge(self, subchain: dict[str, Any], merge_bitmaps: bool = False, *, step: JobStep = ...,
              progress: JobProgress = ..., cancelled: threading.Event | None = None) -> None:
        ...

    def update_volume(self, vol_info: dict[str, Any], vol_attr: dict[str, Any], *, step: JobStep = ...) -> None:
        ...

    def amend_volume(self, vol_info: dict[str, Any], qcow2_attr: dict[str, Any], *, step: JobStep = ...) -> None:
        ...

    def sparsify_volume(self, vol_info: dict[str, Any], *, step: JobStep = ..., progress: JobProgress = ...,
                        cancelled: threading.Event | None = None) -> None:
        ...

    def add_bitmap(self, vol_info: dict[str, Any], name: str, *, step: JobStep = ...) -> None:
        ...

    def remove_bitmap(self, vol_info: dict[str, Any], name: str, *, step: JobStep = ...) -> None:
        ...

    def clear_bitmaps(self, vol_info: dict[str, Any], *, step: JobStep = ...) -> None:
        ...


class NbdService(Protocol):
    """NBD exports of volumes by qemu-nbd (pier.host.storage.nbd.NbdServers), one owner of them."""

    def check(self, server_id: str, config: dict[str, Any]) -> Any:
        ...

    def start_server(self, server_id: str, config: dict[str, Any]) -> str:
        ...

    def stop_server(self, server_id: str) -> None:
        ...

    def running(self) -> list[str]:
        ...

    def stop(self) -> None:
        ...


class TransferService(Protocol):
    """Image tickets served by ovirt-imageio (pier.host.storage.transfer.ImageTransfers)."""

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        """Check a VDSM ImageTicket (its url a volume of a domain here, its timeout within the limit)
        and hand it to imageio; InvalidParameterException or VolumeDoesNotExist, nothing added."""
        ...

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        ...

    def extend_ticket(self, ticket_id: str, timeout: int) -> None:
        ...

    def remove_ticket(self, ticket_id: str) -> None:
        ...

    def open_data(self, sd: str, img: str, vol: str, write: bool, checksum: str | None = None) -> HttpEndpoint:
        """A short-lived ticket of its own on one volume, and where imageio's local service serves it."""
        ...

    def serving(self) -> dict[str, Any]:
        """Where imageio serves images now: url, port, ca, pid (empty before it runs)."""
        ...


class ImageSharingService(Protocol):
    """VDSM's Image.upload/download over HTTP (pier.host.storage.sharing.ImageSharing)."""

    def check(self, sp: str, sd: str, img: str, vol: str | None, method_args: dict[str, Any]) -> str:
        """The volume a transfer moves (the image's leaf when `vol` is None); StoragePoolUnknown,
        StorageDomainDoesNotExist, ImageDoesNotExistInSD, VolumeDoesNotExist, ImageSharingRefused (a
        volume with a parent) or InvalidParameterException (methodArgs), nothing touched."""
        ...

    def upload(self, sd: str, img: str, vol: str | None, method_args: dict[str, Any], *,
               progress: Progress, cancelled: threading.Event) -> int:
        """PUT the volume's file to methodArgs.url; the bytes sent; CopyImageError or TaskCancelled."""
        ...

    def download(self, sd: str, img: str, vol: str | None, method_args: dict[str, Any], *,
                 progress: Progress, cancelled: threading.Event) -> int:
        """GET methodArgs.url into the volume's file; the bytes written. The volume is ILLEGAL from
        the first byte written until all is there and checked, and stays so when it fails."""


class MigrationService(Protocol):
    """Live migrations: from this host (the source side) and to it (the destination side)."""

    def counts(self) -> tuple[int, int]:
        """(incoming, outgoing) migrations now."""
        ...

    def status(self, vm_id: str) -> dict[str, Any]:
        """VDSM's MigrationStats of the VM's last migration from this host."""
        ...

    def check_outgoing(self, vm_id: str, dst: str) -> None:
        """Refuse what cannot start (an unknown or stopped VM, one migrating, a dst not HOST:PORT)."""
        ...

    def migrate(self, vm_id: str, definition: dict[str, Any], params: dict[str, Any],
                progress: Callable[[int, str], None], cancelled: threading.Event) -> dict[str, Any]:
        """Migrate the VM live to params["dst"] (VDSM's MigrateParams); returns when it has ended."""
        ...

    def cancel(self, vm_id: str) -> None:
        """Abort the VM's outgoing migration (it stays here, running), or forget an incoming one."""
        ...

    def change_params(self, vm_id: str, params: dict[str, Any]) -> None:
        """Change a running migration: maxBandwidth (MiB/s), downtime (ms), postcopy (switch to it)."""
        ...

    def expect_incoming(self, vm_id: str, definition: dict[str, Any], incoming_limit: int) -> dict[str, Any]:
        """Check that this host can take the VM and note that it comes (VM.migrationCreate)."""
        ...

    def adopt(self, vm_id: str, dst: str, postcopy_allowed: bool) -> dict[str, Any] | None:
        """After a restart: follow again the outgoing migration libvirt still runs for the VM; its
        MigrationStats, or None when libvirt runs none."""
        ...


class BackupService(Protocol):
    """Backups and checkpoints of running VMs through libvirt's backup API (pier.host.backup.Backups)."""

    def start_backup(self, vm_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """Begin a pull-mode backup (VDSM's BackupConfig); BackupInfo (imageID -> NBD URL)."""
        ...

    def stop_backup(self, vm_id: str, backup_id: str) -> None:
        """End the backup and remove its scratch files; one no longer running is fine."""
        ...

    def backup_info(self, vm_id: str, backup_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
        """BackupInfo of the running backup; NoSuchBackupError when it does not run."""
        ...

    def list_checkpoints(self, vm_id: str) -> list[str]:
        ...

    def dump_checkpoint(self, vm_id: str, checkpoint_id: str) -> dict[str, Any]:
        ...

    def delete_checkpoints(self, vm_id: str, checkpoint_ids: list[str]) -> dict[str, Any]:
        ...

    def redefine_checkpoints(self, vm_id: str, checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
        ...
