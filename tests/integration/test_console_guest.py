"""The serial console WebSocket on the tiny real guest: a shell command typed over the WebSocket
runs in the guest, and its output comes back the same way."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest

from tests.integration.clients import http_request
from tests.integration.test_consoles import open_ws, read_until, wait_closed

if TYPE_CHECKING:  # imported by pytest_plugins, so that pytest rewrites its asserts
    from tests.integration.guest import Guest

pytest_plugins = ["tests.integration.guest"]  # the `booted_guest` fixture
pytestmark = pytest.mark.kvm


def test_serial_console_round_trip_over_the_websocket(booted_guest: Guest) -> None:
    number = random.randrange(10**6, 10**7)
    with open_ws(booted_guest.pierd, f"/api/v1/vms/{booted_guest.vm_id}/console") as console:
        console.send(b"\n")
        # Typed as pier-''N, so that only the shell's output holds pier-N whole.
        console.send(f"echo pier-''{number}\n".encode())
        started = time.monotonic()
        read_until(console, f"pier-{number}\r\n".encode(), timeout=30)
        assert time.monotonic() - started < 30
        status, _, body = http_request("DELETE", f"{booted_guest.api}/vms/{booted_guest.vm_id}")
        assert status == 200, body
        closed = wait_closed(console)
        assert (closed.code, closed.reason) == (1000, f"VM {booted_guest.vm_id} stopped")
