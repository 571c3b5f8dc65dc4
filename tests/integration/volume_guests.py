"""Tiny guests whose disks are Pier volumes: a data center of two directory domains under
DISK_DIR, served by a pierd on qemu:///system, with guests booted on its volumes. What the
snapshot, hibernation, live storage move and block job tests share; each builds its own chains
and guests on it."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import libvirt
import pytest

from tests.integration.clients import HttpRpcClient
from tests.integration.conftest import Pierd
from tests.integration.guest import DISK_DIR, Guest, new_guest, remove_vm, skip_reason, start_default_network
from tests.integration.test_volumes import Site, make_domain

SERIAL_CONSOLE = {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}


@dataclass
class GuestSite:
    """The data center (`site`: its pierd, pool and two domains), the libvirt connection, and the
    guests booted on it, which `guest_site` removes at the end."""

    site: Site
    conn: libvirt.virConnect
    guests: list[Guest] = field(default_factory=list)
    vm_ids: list[str] = field(default_factory=list)

    def disk(self, img: str, vol: str, sd: str | None = None) -> dict[str, Any]:
        """A virtio disk named by its volume, with no path: pierd prepares the chain."""
        return {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": self.site.pool,
                "domainID": sd or self.site.sd, "imageID": img, "volumeID": vol}

    def boot(self, vm_id: str, *disks: dict[str, Any]) -> Guest:
        """The tiny guest on `disks`, with a serial console and no NIC, its agent answering."""
        self.vm_ids.append(vm_id)
        guest = new_guest(self.site.daemon, self.conn, vm_id=vm_id, devices=[SERIAL_CONSOLE, *disks], nic=False)
        self.guests.append(guest)
        return guest


@contextmanager
def guest_site(tmp_path_factory: pytest.TempPathFactory, system_libvirt: str, name: str,
               sd2_tmpfs: str | None = None) -> Iterator[GuestSite]:
    """A pierd on a new data center `pier-<name>-*` of two domains, the second on a tmpfs of
    `sd2_tmpfs` (mount's size=) when given, to be filled up; at the end its guests are closed and
    removed through the pierd running then (a test may restart it), which is stopped."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(f"no tiny guest: {reason}")
    conn = libvirt.open(system_libvirt)
    start_default_network(conn)
    dc = DISK_DIR / f"pier-{name}-{uuid.uuid4().hex[:8]}"
    pool, sd, sd2 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    made: GuestSite | None = None
    small = dc / "mnt" / "_data" / sd2
    if sd2_tmpfs is not None:
        small.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={sd2_tmpfs},mode=0755", f"pier-{name}", str(small)],
                       check=True)
    try:
        for domain in (sd, sd2):
            make_domain(dc, domain, pool)
        daemon = Pierd(tmp_path_factory.mktemp(name) / "state", system_libvirt, "--data-center", str(dc))
        made = GuestSite(Site(daemon, HttpRpcClient(daemon.http), dc, pool, sd, sd2), conn)
        yield made
    finally:
        if made is not None:
            for guest in made.guests:
                guest.close()
            for vm_id in made.vm_ids:
                remove_vm(made.site.daemon, conn, vm_id)
            assert made.site.daemon.stop() == 0
        conn.close()
        if sd2_tmpfs is not None:
            subprocess.run(["umount", "-l", str(small)], check=False)
        shutil.rmtree(dc, ignore_errors=True)


def restart_pierd(site: Site, *guests: Guest) -> Pierd:
    """SIGKILL the site's pierd and start it again on the same state: what a crash and a restart
    leave. The site and the guests talk to the new one."""
    site.daemon.kill()
    again = Pierd(site.daemon.state_dir, site.daemon.uri, "--data-center", str(site.dc))
    site.daemon, site.rpc = again, HttpRpcClient(again.http)
    for guest in guests:
        guest.pierd = again
    return again
