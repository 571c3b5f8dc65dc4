"""contrib/vdsm_xmlrpc_example.py, a VDSM-era XML-RPC script, runs unchanged against a real pierd's /RPC2."""

from __future__ import annotations

import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest

from tests.integration.conftest import Pierd

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "vdsm_xmlrpc_example.py"


def run_example(daemon: Pierd) -> str:
    # The only change an old script needs: its URL carries a Pier token as the password.
    url = daemon.http.replace("http://", f"http://vdsm:{daemon.make_token('operator')}@") + "/RPC2"
    with xmlrpc.client.ServerProxy(url, allow_none=True) as proxy:
        try:
            proxy.ping()
        except xmlrpc.client.ProtocolError as exc:
            pytest.fail(f"pierd does not serve XML-RPC at {url} ({exc.errcode} {exc.errmsg}); "
                        "pier/daemon.py must mount xmlrpc_app(self.registry) at /RPC2")
    done = subprocess.run([sys.executable, str(EXAMPLE), url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\npierd:\n{''.join(daemon.log[-30:])}"
    return done.stdout


def test_the_vdsm_script_runs_unchanged_on_the_test_driver(pierd: Pierd) -> None:
    out = run_example(pierd)
    for step in ("host ", "created ", "listed: ", "paused", "resumed", "destroyed"):
        assert step in out, out


@pytest.mark.kvm
def test_the_vdsm_script_runs_unchanged_on_qemu_system(tmp_path: Path, system_libvirt: str) -> None:
    daemon = Pierd(tmp_path / "state", system_libvirt)
    try:
        out = run_example(daemon)
    finally:
        assert daemon.stop() == 0
    assert "destroyed" in out, out


def test_vdsm_migrate_and_migrate_status_over_xml_rpc(pierd: Pierd) -> None:
    """VDSM's XML-RPC `migrate` took one struct holding the vmId; Pier takes the VM from it."""
    url = pierd.http.replace("http://", f"http://vdsm:{pierd.make_token('operator')}@") + "/RPC2"
    vm_id = "6f1e3e4c-1111-4222-8333-77778888aaaa"
    with xmlrpc.client.ServerProxy(url, allow_none=True) as proxy:
        created = proxy.create({"vmId": vm_id, "vmName": "pier-xmlrpc-migrate", "memSize": 64})
        assert created["status"]["code"] == 0, created
        try:
            stats = proxy.migrateStatus(vm_id)
            assert stats["status"]["code"] == 0 and stats["migrationStats"]["state"] == "none", stats
            itself = pierd.http.removeprefix("http://")
            refused = proxy.migrate({"vmId": vm_id, "dst": itself, "method": "online"})
            assert refused["status"]["code"] == 12 and "is this host itself" in refused["status"]["message"], refused
            assert vm_id in refused["status"]["message"]  # the VM came from the struct
            missing = proxy.migrate({"dst": "192.0.2.7:54321"})
            assert missing["status"]["code"] == -32602 and "params.vmId" in missing["status"]["message"], missing
            assert proxy.getVmStats(vm_id)["statsList"][0]["status"] == "Up"
        finally:
            proxy.destroy(vm_id)
