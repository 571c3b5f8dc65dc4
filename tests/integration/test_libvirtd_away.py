"""While libvirtd is away, pierd answers reads from its cache and says that they are stale:
`libvirtConnected: false` on GET /api/v1 and in host stats, and in VM stats VDSM's
`monitorResponse` "-1" with a `statsAge` that keeps growing; all of it recovers when libvirtd is back.

pierd runs on a private libvirtd (its embedded test driver, on a socket of its own) that the test
kills and starts again; the shared libvirtd is never touched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.integration.clients import http_request
from tests.integration.conftest import Pierd, PrivateLibvirtd


def get(daemon: Pierd, path: str) -> Any:
    status, _, body = http_request("GET", daemon.http + "/api/v1" + path)
    assert status == 200, body
    return json.loads(body)


def wait_for(predicate, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_stats_say_they_are_stale_while_libvirtd_is_away(tmp_path: Path,
                                                         private_libvirtd: PrivateLibvirtd) -> None:
    config = tmp_path / "pierd.toml"
    config.write_text("stats_interval = 0.2\n")
    daemon = Pierd(tmp_path / "state", private_libvirtd.uri, "--config", str(config))
    try:
        assert get(daemon, "")["libvirtConnected"] is True
        vm_id = get(daemon, "/vms")[0]["vmId"]  # the test driver's own running VM, there again after a restart

        def fresh(stats: dict[str, Any]) -> bool:
            return stats.get("monitorResponse") == "0" and float(stats["statsAge"]) < 5

        assert wait_for(lambda: fresh(get(daemon, f"/vms/{vm_id}/stats")[0])), get(daemon, f"/vms/{vm_id}/stats")
        assert get(daemon, "/host/stats")["libvirtConnected"] is True

        private_libvirtd.kill()
        assert wait_for(lambda: get(daemon, "")["libvirtConnected"] is False)
        assert get(daemon, "/host/stats")["libvirtConnected"] is False
        first = get(daemon, f"/vms/{vm_id}/stats")[0]
        assert first["status"] == "Up" and first["monitorResponse"] == "-1", first
        time.sleep(1.0)
        later = get(daemon, f"/vms/{vm_id}/stats")[0]
        assert float(later["statsAge"]) >= float(first["statsAge"]) + 0.9, (first["statsAge"], later["statsAge"])
        everyone = {stats["vmId"]: stats for stats in get(daemon, "/host/vm-stats")}
        assert everyone[vm_id]["monitorResponse"] == "-1"

        private_libvirtd.start()
        assert wait_for(lambda: get(daemon, "")["libvirtConnected"] is True)
        assert wait_for(lambda: fresh(get(daemon, f"/vms/{vm_id}/stats")[0])), get(daemon, f"/vms/{vm_id}/stats")
        assert get(daemon, "/host/stats")["libvirtConnected"] is True
    finally:
        assert daemon.stop() == 0
