"""Secrets at rest and in logs: a token made over any transport is shown to its caller and kept
nowhere else, not even at `--log-level DEBUG`; the state directory and its databases are private.

One pierd at DEBUG, with the broker link and the VDSM STOMP endpoint, makes tokens over every
transport that can call Token.create (it has no legacy XML-RPC name); then the whole state
directory (every file, the sqlite database, its -wal and -shm included) and pierd's whole log are
searched for each secret.
"""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path

from pier.rpc.auth import TOKEN_PREFIX
from tests.integration.clients import HttpRpcClient, RestClient, StompClient, WsClient, unix_request
from tests.integration.conftest import BROKER, Pierd, start_stomp_pierd
from tests.unit.vdsm_stomp_client import VdsmLikeClient, address_of

ANY_TOKEN = re.compile(rb"pier_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")
STATE_FILES = re.compile(r"\.db(-wal|-shm|-journal)?$")


def secret_of(token: str) -> str:
    """The part of a token after `pier_<id>_`."""
    assert token.startswith(TOKEN_PREFIX), token
    return token.split("_", 2)[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def token_request(name: str, request_id: object = None) -> dict:
    return {"jsonrpc": "2.0", "method": "Token.create", "params": {"role": "viewer", "name": name},
            "id": request_id if request_id is not None else str(uuid.uuid4())}


def vdsm_stomp_token(pierd: Pierd) -> str:
    """A token made over the VDSM STOMP endpoint, authenticated with a token as its passcode."""
    address = next(line.split(" on ")[-1].strip() for line in pierd.log if "VDSM-compatible STOMP on" in line)
    client = VdsmLikeClient(address_of(address), timeout=20, connect=False)
    try:
        client.send_frame("CONNECT", {"accept-version": "1.2", "heart-beat": "0,0", "passcode": pierd.token})
        client.reply_sub = client.subscribe(client.reply_to)
        assert client.read_frame().command == "CONNECTED"
        return client.call("Token.create", role="viewer", name="vdsm-stomp")["token"]
    finally:
        client.close()


def stomp_tokens(pierd: Pierd) -> list[str]:
    """Tokens made through the broker: one answered, the same request again (answered from the
    reply cache, which keeps no secret and says so), and one without reply-to (answer dropped)."""
    client = StompClient(BROKER, pierd.requests, token=pierd.token)
    try:
        request = token_request("stomp")
        first = client.send(request)
        token = first["result"]["token"]
        again = client.send(request)
        assert "result" not in again, again
        assert again["error"]["code"] == 99 and "not kept" in again["error"]["message"], again
        kept = again["error"]["data"]["result"]
        assert kept["tokenID"] == first["result"]["tokenID"] and secret_of(token) not in json.dumps(again)
        client.connection.send(pierd.requests, json.dumps(token_request("stomp-no-reply-to")),
                               content_type="application/json", headers={"authorization": f"Bearer {pierd.token}"})
        assert pierd.wait_logged("without reply-to was answered; the answer is dropped")
        assert pierd.wait_logged('"name":"stomp-no-reply-to"'), "the dropped answer is not logged in full"
        dropped = next(line for line in pierd.log if "the answer is dropped" in line and "stomp-no-reply-to" in line)
        assert dropped.count('"token":"***"') == 1, dropped
        return [token]
    finally:
        client.close()


def test_no_secret_is_kept_at_rest_or_logged(stomp_broker: tuple[str, int], tmp_path: Path, test_uri: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as an older pierd left it
    pierd = start_stomp_pierd(state, test_uri, "--log-level", "DEBUG", "--vdsm-stomp", "127.0.0.1:0")
    try:
        tokens = [pierd.token]  # made over the local socket's REST facade
        ws = WsClient(pierd.ws, pierd.token)
        tokens.append(ws.call("Token.create", role="viewer", name="ws")["token"])
        ws.close()
        tokens.append(HttpRpcClient(pierd.http, pierd.token).call("Token.create", role="viewer", name="http")["token"])
        tokens.append(RestClient(pierd.http, pierd.token).call("Token.create", role="viewer", name="rest")["token"])
        status, answer = unix_request(pierd.socket, "POST", "/jsonrpc", token_request("unix-jsonrpc", 1))
        assert status == 200, answer
        tokens.append(answer["result"]["token"])
        tokens.append(vdsm_stomp_token(pierd))
        tokens += stomp_tokens(pierd)
        assert len(set(tokens)) == 7

        assert mode(state) == 0o700
        assert pierd.logged(f"state directory {state} was readable by others")
        databases = [path for path in state.iterdir() if STATE_FILES.search(path.name)]
        assert {path.name for path in databases} >= {"pier.db", "pier.db-wal", "pier.db-shm"}
        assert {path.name: oct(mode(path)) for path in databases} == {path.name: "0o600" for path in databases}
    finally:
        assert pierd.stop() == 0, "".join(pierd.log[-30:])

    log = "".join(pierd.log)
    files = {path: path.read_bytes() for path in state.rglob("*") if path.is_file()}
    assert any(path.name == "pier.db" for path in files)
    for token in tokens:
        secret = secret_of(token)
        assert secret not in log, f"the secret of a token is in pierd's log: {secret}"
        for path, data in files.items():
            assert secret.encode() not in data, f"the secret of a token is in {path}"
    assert not ANY_TOKEN.search(log.encode()), "a token is in pierd's log"
    for path, data in files.items():
        assert not ANY_TOKEN.search(data), f"a token is in {path}"
