"""The destination's count of incoming migrations (VM.migrationCreate's notes), on libvirt's test
driver: a note ends when the VM arrives, and also when it came and went before anyone counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest

from pier.host.migration import Migrations
from pier.host.vmstate import DOWN, UP, VmCache, VmRecord
from pier.rpc.errors import MigrateLimit

VM = "6a1b2c3d-0000-4000-8000-000000000001"
OTHER = "6a1b2c3d-0000-4000-8000-000000000002"


class DriverConnection:
    """Pier's Connection as Migrations uses it, over a libvirt test driver of this test's own."""

    def __init__(self, path: Path) -> None:
        path.write_text("<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>"
                        "<memory>4194304</memory></node>")
        self.conn = libvirt.open(f"test://{path}")

    def get(self) -> libvirt.virConnect:
        return self.conn

    def current(self) -> libvirt.virConnect:
        return self.conn

    def check(self, exc: libvirt.libvirtError, conn: Any = None) -> None:
        raise exc


@pytest.fixture
def site(tmp_path: Path) -> tuple[Migrations, VmCache]:
    cache = VmCache()
    migrations = Migrations(DriverConnection(tmp_path / "node.xml"), cache, lambda news: None,  # type: ignore[arg-type]
                            lambda name, event: None, lambda: "host-b")
    return migrations, cache


def test_a_vm_that_arrived_and_was_destroyed_before_anyone_counted_is_no_longer_incoming(
        site: tuple[Migrations, VmCache]) -> None:
    migrations, cache = site
    migrations.expect_incoming(VM, {}, 1)
    assert migrations.counts() == (1, 0)
    cache.add(VmRecord(VM, "guest", status=UP))  # it arrived and ran...
    cache.remove(VM)  # ...and was destroyed, all between two Host.getStats
    assert migrations.counts() == (0, 0)
    migrations.expect_incoming(OTHER, {}, 1)  # the limit of one is free again
    assert migrations.counts() == (1, 0)


def test_an_incoming_vm_left_down_ends_its_note_and_a_tombstone_of_an_earlier_stay_does_not(
        site: tuple[Migrations, VmCache]) -> None:
    migrations, cache = site
    cache.add(VmRecord(VM, "guest", status=UP))
    cache.remove(VM)  # it lived here once, and left
    migrations.expect_incoming(VM, {}, 1)  # now it comes back
    assert migrations.counts() == (1, 0)
    with pytest.raises(MigrateLimit):
        migrations.expect_incoming(OTHER, {}, 1)
    cache.add(VmRecord(VM, "guest", status=DOWN))  # libvirt gave up on the incoming guest
    assert migrations.counts() == (0, 0)
