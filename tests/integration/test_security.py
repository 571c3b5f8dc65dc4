"""Security as a caller sees it: TLS on every TCP listener, certificates, tokens, roles, the audit log."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from pier.rpc.auth import fingerprint
from pier.tlsfiles import init_tls, renew_server
from tests.integration.clients import CallFailed, WsClient, http_request
from tests.integration.conftest import Pierd, new_vm_id
from tests.integration.test_verbs import vm_params


@pytest.fixture
def tls_pierd(tmp_path: Path, test_uri: str):
    daemon = Pierd(tmp_path / "state", test_uri, secure=True)
    yield daemon
    assert daemon.stop() == 0


def ca_context(daemon: Pierd, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(daemon.state_dir / "tls" / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tcp_listeners_speak_tls_only(tls_pierd: Pierd) -> None:
    assert tls_pierd.http.startswith("https://") and tls_pierd.ws.startswith("wss://")
    status, _, body = http_request("GET", tls_pierd.http + "/api/v1", context=ca_context(tls_pierd))
    info = json.loads(body)
    assert status == 200 and info["tls"]["expiresInDays"] > 300 and "warning" not in info["tls"]
    plain = tls_pierd.http.replace("https://", "http://") + "/api/v1"
    try:
        status, _, body = http_request("GET", plain)
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        status, body = None, b""
    assert status in (None, 400) and b"hostId" not in body  # refused, or told to use TLS; nothing served
    watcher = WsClient(tls_pierd.ws, tls_pierd.token, ssl=ca_context(tls_pierd))
    assert watcher.call("Host.ping2") is True
    watcher.close()


def test_plain_text_only_on_loopback_and_only_when_asked(tmp_path: Path, test_uri: str) -> None:
    refused = subprocess.run([sys.executable, "-m", "pier.daemon", "--libvirt-uri", test_uri, "--insecure-loopback",
                              "--http", "0.0.0.0:0", "--state-dir", str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2 and "127.0.0.1 or ::1 only" in refused.stderr


def test_client_certificates_must_be_trusted(tls_pierd: Pierd, tmp_path: Path) -> None:
    own = tls_pierd.state_dir / "tls"
    admin = ca_context(tls_pierd, own / "client.pem", own / "client-key.pem")
    assert json.loads(http_request("GET", tls_pierd.http + "/api/v1/tokens", headers={"Authorization": ""},
                                   context=admin)[2])  # pierd's own client certificate is an admin
    stranger = init_tls(tmp_path / "elsewhere")  # a certificate from another CA
    unknown = ca_context(tls_pierd, stranger.client, stranger.client_key)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # TLS 1.3 tells on the first read
        http_request("GET", tls_pierd.http + "/api/v1/vms", headers={"Authorization": ""}, context=unknown)
    added = http_request("POST", tls_pierd.http + "/api/v1/trust", {"certificate": stranger.client.read_text(),
                                                                    "role": "viewer"}, context=admin)
    assert added[0] == 201
    assert json.loads(added[2])["fingerprint"] == fingerprint(ssl.PEM_cert_to_DER_cert(stranger.client.read_text()))
    status, _, _ = http_request("GET", tls_pierd.http + "/api/v1/vms", headers={"Authorization": ""}, context=unknown)
    assert status == 200  # trusted now, as a viewer
    status, _, body = http_request("POST", f"{tls_pierd.http}/api/v1/vms", vm_params(new_vm_id()),
                                   headers={"Authorization": ""}, context=unknown)
    assert status == 403 and json.loads(body)["name"] == "forbidden"


def test_a_viewer_token_cannot_pause_a_vm(pierd: Pierd) -> None:
    vm_id = new_vm_id()
    http_request("POST", pierd.http + "/api/v1/vms", vm_params(vm_id))
    viewer = pierd.make_token("viewer")
    status, headers, body = http_request("POST", f"{pierd.http}/api/v1/vms/{vm_id}/pause", {}, headers=bearer(viewer))
    problem = json.loads(body)
    assert status == 403 and headers["Content-Type"].startswith("application/problem+json")
    assert problem["name"] == "forbidden" and "operator" in problem["detail"]
    client = WsClient(pierd.ws, viewer)
    assert client.call("VM.getInfo", vmID=vm_id)["status"] == "Up"
    with pytest.raises(CallFailed) as refused:
        client.call("VM.pause", vmID=vm_id)
    assert refused.value.code == -32003
    client.close()
    status, _, body = http_request("GET", pierd.http + "/api/v1/vms", headers={"Authorization": ""})
    assert status == 401 and json.loads(body)["name"] == "unauthenticated"


def test_a_revoked_token_stops_working_even_on_an_open_connection(pierd: Pierd) -> None:
    made = json.loads(http_request("POST", pierd.http + "/api/v1/tokens", {"role": "operator", "name": "ci"})[2])
    client = WsClient(pierd.ws, made["token"])
    assert client.call("Host.ping2") is True
    assert http_request("DELETE", f"{pierd.http}/api/v1/tokens/{made['tokenID']}")[0] == 200
    with pytest.raises((ConnectionClosed, CallFailed)):  # refused, if it gets in before the close
        client.call("Host.ping2")
    with pytest.raises(ConnectionClosed) as closed:  # the connection ends, saying why (test_revocation.py)
        client.connection.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == f"token {made['tokenID']} was revoked"
    status, _, _ = http_request("GET", pierd.http + "/api/v1/vms", headers=bearer(made["token"]))
    assert status == 401
    client.close()


def test_the_audit_log_holds_exactly_the_changing_calls(pierd: Pierd) -> None:
    start = json.loads(http_request("GET", pierd.http + "/api/v1/audit")[2])["last"]
    vm_id = new_vm_id()
    http_request("POST", pierd.http + "/api/v1/vms", vm_params(vm_id))
    http_request("GET", f"{pierd.http}/api/v1/vms/{vm_id}")
    http_request("POST", f"{pierd.http}/api/v1/vms/{vm_id}/pause", {})
    http_request("GET", pierd.http + "/api/v1/host/stats")
    http_request("POST", pierd.http + "/api/v1/tokens", {"role": "viewer"})
    entries = json.loads(http_request("GET", f"{pierd.http}/api/v1/audit?after={start}")[2])["entries"]
    assert [(e["verb"], e["outcome"], e["via"]) for e in entries] == [
        ("VM.create", "ok", "rest"), ("VM.pause", "ok", "rest"), ("Token.create", "ok", "rest")]
    assert all(e["who"].startswith("token ") and e["peer"].startswith("127.0.0.1:") for e in entries)
    assert entries[0]["target"] == vm_id


def test_certificate_reload_keeps_existing_connections(tls_pierd: Pierd) -> None:
    tls_dir = tls_pierd.state_dir / "tls"
    host, port = tls_pierd.http.removeprefix("https://").rsplit(":", 1)
    before = served_certificate(host, int(port), tls_dir / "ca.pem")
    open_connection = WsClient(tls_pierd.ws, tls_pierd.token, ssl=ca_context(tls_pierd))
    assert open_connection.call("Host.ping2") is True
    renew_server(tls_dir)
    tls_pierd.process.send_signal(signal.SIGHUP)
    assert tls_pierd.wait_logged("reloaded the TLS certificate")
    assert open_connection.call("Host.ping2") is True  # not dropped
    after = served_certificate(host, int(port), tls_dir / "ca.pem")
    assert after != before and after == ssl.PEM_cert_to_DER_cert((tls_dir / "server.pem").read_text())
    fresh = WsClient(tls_pierd.ws, tls_pierd.token, ssl=ca_context(tls_pierd))
    assert fresh.call("Host.ping2") is True
    fresh.close()
    open_connection.close()


def served_certificate(host: str, port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port)) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.getpeercert(binary_form=True)


def test_refused_changes_are_audited_and_counted(pierd: Pierd) -> None:
    start = json.loads(http_request("GET", pierd.http + "/api/v1/audit?newest=true&limit=1")[2])["last"]
    for _ in range(96):
        status, _, _ = http_request("POST", pierd.http + "/api/v1/vms", vm_params(new_vm_id()),
                                    headers={"Authorization": ""})
        assert status == 401
    viewer = pierd.make_token("viewer")
    assert http_request("POST", pierd.http + "/api/v1/vms", vm_params(new_vm_id()), headers=bearer(viewer))[0] == 403
    assert http_request("POST", pierd.http + "/api/v1/vms/not-a-uuid/pause", {})[0] == 400
    for _ in range(25):  # past 20 failed logins a minute, the address is refused without a look at its token
        http_request("POST", pierd.http + "/api/v1/vms/" + new_vm_id() + "/pause", {},
                     headers=bearer("pier_guess_wrong"))
    assert http_request("GET", pierd.http + "/api/v1/vms")[0] == 200  # reads are not audited, even refused
    page = json.loads(http_request("GET", f"{pierd.http}/api/v1/audit?after={start}&refused=true")[2])
    counted = {(e["verb"], e["outcome"]): e["count"] for e in page["entries"]}
    assert all(e["refused"] and e["peer"] == "127.0.0.1" for e in page["entries"])
    assert counted == {("VM.create", "unauthenticated"): 96, ("VM.create", "forbidden"): 1,
                       ("VM.pause", "InvalidParams"): 1, ("VM.pause", "unauthenticated"): 20,
                       ("VM.pause", "tooManyRequests"): 5}
    assert len(page["entries"]) == 5  # 123 refusals, one entry per source, caller, verb and outcome


def test_reads_without_credentials_tell_nothing_of_the_host(pierd: Pierd) -> None:
    status, headers, body = http_request("GET", pierd.http + "/metrics", headers={"Authorization": ""})
    assert status == 401 and b"no credentials" in body and headers["WWW-Authenticate"] == "Bearer"
    status, _, body = http_request("GET", pierd.http + "/metrics", headers=bearer(pierd.make_token("viewer")))
    assert status == 200 and b"pier_calls_total" in body
    status, _, body = http_request("GET", pierd.http + "/api/v1/openapi.json", headers={"Authorization": ""})
    info = json.loads(body)["info"]
    assert status == 200 and "x-pier-agent" not in info
    host_id = json.loads(http_request("GET", pierd.http + "/api/v1")[2])["hostId"]
    for fact in (host_id, pierd.uri, pierd.socket, str(pierd.state_dir)):
        assert fact.encode() not in body
    identified = json.loads(http_request("GET", pierd.http + "/api/v1/openapi.json")[2])["info"]
    assert identified["x-pier-agent"]["hostId"] == host_id


def test_metrics_can_be_served_openly_when_asked(tmp_path: Path, test_uri: str) -> None:
    daemon = Pierd(tmp_path / "state", test_uri, "--metrics-open")
    try:
        assert http_request("GET", daemon.http + "/metrics", headers={"Authorization": ""})[0] == 200
    finally:
        assert daemon.stop() == 0
