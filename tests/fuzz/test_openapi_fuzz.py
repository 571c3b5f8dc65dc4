"""schemathesis against the REST facade's generated OpenAPI document, on a real pierd.

Every operation of the document is fuzzed (schemathesis's examples, coverage and fuzzing phases,
positive and negative data) and every response is checked by all of schemathesis's built-in
checks: no 5xx, status codes, content types, headers and bodies as documented (errors as
`application/problem+json`), documented-valid input accepted and documented-invalid input
refused. No response may hold traceback text, and pierd must answer Host.ping2 after each one.

How it is invoked: schemathesis's lazy `schemathesis.pytest.from_fixture` loader does not run
under pytest 9.2 (it sets `Function._nodeid`, which pytest 9.2 no longer has), so the schema is
loaded with `schemathesis.openapi.from_dict` from the document pierd generates
(`pier.facade.openapi.openapi_document`), and `test_served_document_is_the_fuzzed_one` checks that
`GET /api/v1/openapi.json` serves exactly that document. Each case is sent to this module's pierd
with `case.call(base_url=..., headers=auth_headers)`.

No operation is excluded (schemathesis's stateful phase is off: the document declares no links).
Long-poll `wait` query values are cut to a few milliseconds (a valid wait may last 300 s), and one
in four positive cases that name a VM or a task name one that exists, so that the routes are
fuzzed past "not found" (with a shutdown's `delay` and `timeout` then cut, so that it does not
hold that VM for long). One check is switched off only for inputs whose validity a JSON Schema
cannot express (`_beyond_the_schema`: raw domain XML, two different VM ids, a certificate's
content). Inputs are the same on
every run (`seed`), unless PIER_FUZZ_RANDOM=1.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import schemathesis
from schemathesis import checks as st_checks
from schemathesis.generation import GenerationMode

from pier.facade.openapi import openapi_document
from tests.fuzz.conftest import MAX_WAIT, REQUEST_TIMEOUT, SCHEMA, Target, examples, leaks_traceback, tried

API = "/api/v1"
DOCUMENT = openapi_document(SCHEMA)
CONFIG = schemathesis.Config.from_dict({
    **({} if os.environ.get("PIER_FUZZ_RANDOM") == "1" else {"seed": 6}),  # 6: the security issue's number
    "generation": {"max-examples": examples(8)},
    "phases": {"stateful": {"enabled": False}},
    # 422 is what pierd answers a well-formed request it could not carry out (createErr, imageErr:
    # the disk image a valid VM.create names does not exist), as 404 is for a VM that does not.
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}},
})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

VM_PARAMS = {"memSize": 32, "smp": "1", "devices": []}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


class Resources:
    """A VM and a task that exist, for positive cases to name now and then (made again when a case removed them).

    The task is a shutdown waiting an hour on a VM of its own: changing verbs on a VM wait while a
    task holds it (test_destroy_is_not_held_up_by_a_waiting_shutdown), so the VM cases name is never
    the task's.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.vm = self.task = ""

    def _create_vm(self) -> str:
        vm = str(uuid.uuid4())
        reply = self.target.request("POST", f"{API}/vms", _json({**VM_PARAMS, "vmId": vm, "vmName": f"fuzz-{vm}"}),
                                    content_type="application/json")
        assert reply.status == 201, (reply.status, reply.text)
        return vm

    def vm_id(self) -> str:
        if not self.vm or self.target.request("GET", f"{API}/vms/{self.vm}").status == 404:
            self.vm = self._create_vm()
        return self.vm

    def task_id(self) -> str:
        if not self.task or self.target.request("GET", f"{API}/tasks/{self.task}").status == 404:
            reply = self.target.request("POST", f"{API}/vms/{self._create_vm()}/shutdown", _json({"delay": 3600}),
                                        content_type="application/json")
            assert reply.status == 202, (reply.status, reply.text)
            self.task = reply.json()["taskID"]
        return self.task

    def stop_task(self) -> None:
        """Cancel the task, so that nothing waits on it when pierd stops."""
        if self.task:
            self.target.request("POST", f"{API}/tasks/{self.task}/stop")


@pytest.fixture(scope="module")
def resources(target: Target) -> Iterator[Resources]:
    made = Resources(target)
    yield made
    made.stop_task()


def test_served_document_is_the_fuzzed_one(target: Target, auth_headers: dict[str, str]) -> None:
    """What pierd serves at /api/v1/openapi.json is the document fuzzed here (`info` adds this host's facts)."""
    tried("openapi document")
    reply = target.request("GET", f"{API}/openapi.json", headers=auth_headers)
    assert reply.status == 200
    served = reply.json()
    assert {key: value for key, value in served.items() if key != "info"} == \
        {key: value for key, value in DOCUMENT.items() if key != "info"}
    assert served["info"].items() >= DOCUMENT["info"].items()


def _beyond_the_schema(case: schemathesis.Case) -> list[Any]:
    """The checks that cannot hold for an input whose validity a JSON Schema cannot express: a
    VM.create body carrying raw domain XML, guest NUMA nodes (their memory must add up to memSize,
    their cpus be the VM's) or a vmId other than the query's vmID (or a device verb's
    params.vmId other than the path's), a Trust.add
    certificate (any text after the PEM header is documented-valid), a VM.hotplugHostdev or
    VM.hotunplugHostdev device's <hostdev> XML, a hibernation handle naming one volume twice, a
    sharing URL with credentials: pierd answers those with 400 (credentials: 1000) naming vmParams.xml, vmID,
    certificate, devices[i], the handle or methodArgs.url. And a null in a query string, which is the text
    "null" once sent, and a WebSocket route reached without a WebSocket."""
    operation = case.operation.definition.raw.get("operationId")
    if case.operation.definition.raw.get("x-pier-stream") == "websocket":
        # A WebSocket route answers a valid plain GET 426 (Upgrade Required): the fuzzer speaks no WebSocket.
        return [st_checks.positive_data_acceptance]
    if isinstance(case.query, dict) and any(value is None for value in case.query.values()):
        # A query string has no null: `types=null` is the one-item array ["null"], which is valid.
        return [st_checks.negative_data_rejection]
    if operation in ("Trust.add", "VM.hotplugHostdev", "VM.hotunplugHostdev"):  # a certificate, <hostdev> XML
        return [st_checks.positive_data_acceptance]
    if isinstance(case.body, dict) and isinstance(case.path_parameters, dict):
        # VDSM's device verbs name the VM in the path and, as VDSM's XML-RPC did, in params.vmId
        path_id, body_id = case.path_parameters.get("vmID"), case.body.get("vmId")
        if isinstance(path_id, str) and isinstance(body_id, str) and path_id.lower() != body_id.lower():
            return [st_checks.positive_data_acceptance]
    if operation == "VM.create" and isinstance(case.body, dict):
        query_id = (case.query or {}).get("vmID") if isinstance(case.query, dict) else None
        body_id = case.body.get("vmId")
        if "xml" in case.body or "guestNumaNodes" in case.body or (isinstance(query_id, str) and isinstance(body_id, str)
                                  and query_id.lower() != body_id.lower()):
            return [st_checks.positive_data_acceptance]
    if isinstance(case.body, dict) and any(_one_volume_twice(case.body.get(name))
                                           for name in ("hiberVolHandle", "hibernationVolHandle", "snapMemory")):
        return [st_checks.positive_data_acceptance]
    if operation in ("Image.upload", "Image.download") and isinstance(case.body, dict) and _has_credentials(
            case.body.get("methodArgs")):
        return [st_checks.positive_data_acceptance]
    return []


def _has_credentials(method_args: Any) -> bool:
    """A sharing URL with user info: the schema takes it so that pierd can say where credentials go
    (methodArgs.headers), and pierd refuses it."""
    url = method_args.get("url") if isinstance(method_args, dict) else None
    return isinstance(url, str) and "@" in url.split("://", 1)[-1].split("/", 1)[0]


def _one_volume_twice(handle: Any) -> bool:
    """A hibernation handle naming one volume as both the memory and the memory-config volume
    (answered 400 naming the field): six valid ids cannot say that they must differ."""
    ids = [part.strip().lower() for part in handle.split(",")] if isinstance(handle, str) else []
    return len(ids) == 6 and ids[2:4] == ids[4:6]


def _cut(container: Any, name: str, longest: float) -> None:
    """Make `container[name]` at most `longest` when it is a number (or a number's text) above it."""
    value = container.get(name) if isinstance(container, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return
    try:
        number = float(value)
    except ValueError:
        return
    if math.isfinite(number) and number > longest:
        container[name] = str(longest) if isinstance(value, str) else longest


def _aim(case: schemathesis.Case, resources: Resources) -> None:
    """Cut long-poll waits; let one in four positive cases that name a VM or task name one that exists.

    (Which ones is decided from the case itself, so that runs stay reproducible: drawing from
    `st.data()` through `schema.given` would turn schemathesis's coverage phase off.)
    """
    _cut(case.query, "wait", MAX_WAIT)
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE or not case.path_parameters:
        return
    if zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 4:
        return
    if "vmID" in case.path_parameters:
        case.path_parameters["vmID"] = resources.vm_id()
        _cut(case.body, "delay", 0)  # a shutdown may not hold the VM for long: other cases want it
        _cut(case.body, "timeout", 1)
    if "taskID" in case.path_parameters:
        case.path_parameters["taskID"] = resources.task_id()


@schema.parametrize()
def test_openapi(case: schemathesis.Case, target: Target, auth_headers: dict[str, str], resources: Resources) -> None:
    _aim(case, resources)
    tried(f"openapi {case.operation.label}")
    response = case.call(base_url=target.http, headers=auth_headers, timeout=REQUEST_TIMEOUT)
    assert not leaks_traceback(response.content), response.content[:2000]
    case.validate_response(response, excluded_checks=_beyond_the_schema(case))
    target.assert_serving()


# -- defects this suite found, kept as regression tests ------------------------------------------------


def assert_documented_valid(path: str, body: Any) -> None:
    """`body` is a valid request body for POST `path`, as the document says."""
    body_schema = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**body_schema, "components": DOCUMENT["components"]}).validate(body)


@pytest.mark.parametrize("change", [{"vmName": None}, {"memSize": None}, {"smp": ""}, {"smp": 0},
                                    {"kvmEnable": "x"}, {"launchPaused": "maybe"}, {"display": "x"},
                                    {"devices": [{"deviceType": "disk"}]}],
                         ids=["no vmName", "no memSize", "smp empty", "smp 0", "kvmEnable x", "launchPaused maybe",
                              "display x", "disk without path"])
def test_document_and_vm_create_agree_on_what_is_refused(target: Target, change: dict[str, Any]) -> None:
    """Once, the document's VmParameters required no field and allowed any smp, kvmEnable, display or
    device, so documented-valid bodies were answered 400."""
    vm = str(uuid.uuid4())
    body = {**VM_PARAMS, "vmId": vm, "vmName": f"fuzz-{vm}", **change}
    body = {key: value for key, value in body.items() if value is not None}
    with pytest.raises(jsonschema.ValidationError):
        assert_documented_valid(f"{API}/vms", body)
    reply = target.request("POST", f"{API}/vms", _json(body), content_type="application/json")
    assert reply.status == 400, reply.text
    assert reply.json()["data"]["field"].startswith("params.vmParams"), reply.text


def test_document_and_trust_add_agree_on_what_is_refused(target: Target) -> None:
    """Once, the document allowed any string as a certificate."""
    body = {"certificate": "0", "role": "viewer"}
    with pytest.raises(jsonschema.ValidationError):
        assert_documented_valid(f"{API}/trust", body)
    reply = target.request("POST", f"{API}/trust", _json(body), content_type="application/json")
    assert reply.status == 400 and reply.json()["data"]["field"] == "params.certificate", reply.text


def test_a_null_body_is_refused(target: Target, resources: Resources) -> None:
    vm = resources.vm_id()
    reply = target.request("POST", f"{API}/vms/{vm}/pause", b"null", content_type="application/json")
    target.request("POST", f"{API}/vms/{vm}/cont")
    assert reply.status == 400, (reply.status, reply.text)


def test_destroy_is_not_held_up_by_a_waiting_shutdown(target: Target, resources: Resources) -> None:
    vm = resources.vm_id()
    task = target.request("POST", f"{API}/vms/{vm}/shutdown", _json({"delay": 3600}),
                          content_type="application/json").json()["taskID"]
    try:
        reply = target.request("DELETE", f"{API}/vms/{vm}", timeout=2)  # once, it waited for the task's delay
    except TimeoutError:
        pytest.fail("DELETE /api/v1/vms/{vmID} did not answer within 2 s while a shutdown task waited")
    finally:
        target.request("POST", f"{API}/tasks/{task}/stop")  # frees the VM, and the DELETE still waiting
    assert reply.status == 200, (reply.status, reply.text)


def test_an_empty_array_item_in_a_query_is_refused(target: Target) -> None:
    reply = target.request("GET", f"{API}/host/jobs?job_ids=")
    assert reply.status == 400, (reply.status, reply.text)


def test_document_has_no_stray_keys() -> None:
    def stray(node: Any, where: str) -> list[str]:
        if isinstance(node, dict):
            return [f"{where}/{key}" for key, value in node.items() if value is None and key != "default"] + \
                [found for key, value in node.items() for found in stray(value, f"{where}/{key}")]
        if isinstance(node, list):
            return [found for index, value in enumerate(node) for found in stray(value, f"{where}/{index}")]
        return []

    assert stray(DOCUMENT["paths"], "paths") == []  # once: 3 keys such as ".../schema/from the oldest kept)."


def test_events_long_poll_with_nan_wait_returns(target: Target) -> None:
    last = target.request("GET", f"{API}/events").json()["last"]
    try:
        reply = target.request("GET", f"{API}/events?after={last}&wait=nan", timeout=2)
    except TimeoutError:
        pytest.fail("GET /api/v1/events?wait=nan did not answer within 2 s")
    assert reply.status in (200, 400), reply.status

