"""Image.upload and Image.download over the fake services: what cannot work is refused at the call with
VDSM's codes (no task starts), methodArgs are checked field by field, and the legacy names take
VDSM's positional order. The transfers themselves: tests/integration/test_image_sharing.py."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pier.host.storage.sharing import remote
from pier.rpc.errors import InvalidParameterException, PierError
from pier.rpc.registry import CallContext
from pier.transports.xmlrpc import XmlRpc
from tests.unit.conftest import ADMIN, Stack

BLANK = "00000000-0000-0000-0000-000000000000"
SP, SD = "10000000-0000-4000-8000-000000000001", "20000000-0000-4000-8000-000000000002"
IMG, VOL, IMG2, BASE, TOP = ("40000000-0000-4000-8000-000000000004", "50000000-0000-4000-8000-000000000005",
                             "60000000-0000-4000-8000-000000000006", "70000000-0000-4000-8000-000000000007",
                             "80000000-0000-4000-8000-000000000008")
IDS = {"storagepoolID": SP, "storagedomainID": SD, "imageID": IMG}
HTTP = {"method": "http", "url": "https://glance.example:9292/v1/images/abc?sig=secret", "headers": {"X-Auth-Token": "t"}}


@pytest.fixture
def site(stack: Stack) -> Stack:
    stack.volumes.domains.add(SD)
    stack.volumes.pools.add(SP)
    stack.volumes.create(SD, IMG, VOL, "1024", "RAW", "SPARSE", "DATA", "", BLANK, BLANK)
    stack.volumes.create(SD, IMG2, BASE, "1024", "COW", "SPARSE", "DATA", "", BLANK, BLANK)
    stack.volumes.create(SD, IMG2, TOP, "1024", "COW", "SPARSE", "DATA", "", IMG2, BASE)
    return stack


def refused(stack: Stack, verb: str, **params: object) -> PierError:
    tasks = set(stack.tasks.all())
    with pytest.raises(PierError) as caught:
        stack.call(verb, **params)
    assert set(stack.tasks.all()) == tasks, "a refused call started a task"
    return caught.value


@pytest.mark.parametrize("verb", ["Image.upload", "Image.download"])
def test_the_image_leaf_is_moved_when_no_volume_is_named(site: Stack, verb: str) -> None:
    task = site.call(verb, methodArgs=HTTP, **IDS)
    assert isinstance(task, dict) and site.tasks.wait(task["taskID"], 5)["state"] == "succeeded"
    assert site.sharing is not None and site.sharing.moved == [(verb.split(".")[1], SD, IMG, VOL, HTTP["url"])]


@pytest.mark.parametrize("verb", ["Image.upload", "Image.download"])
def test_what_cannot_be_shared_is_refused_at_the_call_with_vdsms_codes(site: Stack, verb: str) -> None:
    other = "90000000-0000-4000-8000-000000000009"
    assert refused(site, verb, methodArgs=HTTP, **{**IDS, "storagepoolID": other}).code == 309
    assert refused(site, verb, methodArgs=HTTP, **{**IDS, "storagedomainID": other}).code == 358
    assert refused(site, verb, methodArgs=HTTP, **{**IDS, "imageID": other}).code == 268
    assert refused(site, verb, methodArgs=HTTP, volumeID=other, **IDS).code == 201
    chain = refused(site, verb, methodArgs=HTTP, volumeID=TOP, **{**IDS, "imageID": IMG2})
    assert chain.code == 261 and chain.http_status == 409 and "parent" in chain.message


@pytest.mark.parametrize("verb", ["Image.upload", "Image.download"])
def test_method_args_are_checked_naming_the_field(site: Stack, verb: str) -> None:
    error = refused(site, verb, methodArgs={**HTTP, "method": "nfs"}, **IDS)
    assert error.code == -32602 and "methodArgs.method" in error.message
    error = refused(site, verb, methodArgs={**HTTP, "url": "ftp://host/x"}, **IDS)
    assert error.code == -32602 and "methodArgs.url" in error.message
    error = refused(site, verb, methodArgs={**HTTP, "url": "http://user:pw@host/x"}, **IDS)
    assert error.code == 1000 and "credentials" in error.message
    error = refused(site, verb, methodArgs={**HTTP, "headers": {"Content-Length": "3"}}, **IDS)
    assert error.code == 1000 and "methodArgs.headers.Content-Length" in error.message
    error = refused(site, verb, methodArgs={**HTTP, "headers": {"Bad Name": "x"}}, **IDS)
    assert error.code == -32602 and "methodArgs.headers" in error.message


def test_a_volume_a_running_vm_uses_is_busy(site: Stack) -> None:
    path = site.volumes.volume_path(SD, IMG, VOL)
    site.vms.create(None, {"vmName": "db", "memSize": 64, "devices": [{"deviceType": "disk", "path": path}]})
    vm = next(iter(site.vms.records.values()))
    vm.setdefault("devices", [{"deviceType": "disk", "path": path}])
    assert refused(site, "Image.download", methodArgs=HTTP, **IDS).code == 203
    assert refused(site, "Image.upload", methodArgs=HTTP, volumeID=VOL, **IDS).code == 203


def test_the_legacy_names_take_vdsms_positional_order(site: Stack) -> None:
    context = CallContext("xmlrpc", identity=ADMIN)
    for name, params in (("downloadImage", [HTTP, SP, SD, IMG]), ("uploadImage", [HTTP, SP, SD, IMG, VOL])):
        answer = XmlRpc(site.registry).call(name, params, context)
        assert answer["status"]["code"] == 0, answer
        assert site.tasks.wait(answer["uuid"], 5)["state"] == "succeeded"
    assert site.sharing is not None and [moved[0] for moved in site.sharing.moved] == ["download", "upload"]


def test_remote_keeps_the_query_out_of_what_it_shows() -> None:
    peer = remote(HTTP)
    assert (peer.scheme, peer.host, peer.port, peer.target) == ("https", "glance.example", 9292, "/v1/images/abc?sig=secret")
    assert peer.shown == "https://glance.example:9292/v1/images/abc"
    assert remote({"method": "http", "url": "http://[::1]/x"}).shown == "http://[::1]/x"
    with pytest.raises(InvalidParameterException, match="white space"):
        remote({"method": "http", "url": "http://host/a\n"})
    with pytest.raises(InvalidParameterException, match="one line"):
        remote({"method": "http", "url": "http://host/a", "headers": {"X-A": "b\r\nX-B: c"}})


def test_the_headers_of_method_args_are_kept_neither_in_the_audit_log_nor_in_the_task_table(site: Stack) -> None:
    headers = {"Authorization": "Bearer s3cret-a", "X-Custom-Key": "s3cret-b", "Accept": "*/*"}
    task = site.call("Image.download", methodArgs={**HTTP, "headers": headers}, **IDS)
    assert isinstance(task, dict) and site.tasks.wait(task["taskID"], 5)["state"] == "succeeded"
    entry = site.audit.read()["entries"][-1]
    assert entry["verb"] == "Image.download"
    assert entry["params"]["methodArgs"] == {**HTTP, "headers": "***"}
    rows = sqlite3.connect(site.db).execute("SELECT params FROM tasks WHERE id = ?", (task["taskID"],)).fetchall()
    assert len(rows) == 1 and json.loads(rows[0][0])["methodArgs"] == {**HTTP, "headers": "***"}
    assert site.sharing is not None and site.sharing.moved[-1][4] == HTTP["url"]  # the peer gets them: tests/integration
