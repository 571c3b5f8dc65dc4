"""XML-RPC fuzzed at POST /RPC2 against a real pierd.

Inputs: random bytes, valid methodCalls of real (legacy and new) verb names with random params,
the same mutated (bytes flipped, cut, spliced, tags renamed or dropped), entity and DTD tricks
(billion laughs, external entities, external DTDs, parameter entities, XInclude), odd encodings,
and deep nesting. Every answer must be HTTP 200 with a methodResponse holding either a fault or
VDSM's status envelope (or 413/405 with a fault, as documented), never an internal error for bad
input, never traceback text, never the content of a local file; entity tricks must be refused
quickly. After every example pierd must still answer Host.ping2.
"""

from __future__ import annotations

import re
import time
import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pier.rpc.limits import DRAIN_LIMIT
from tests.fuzz.conftest import (
    SCHEMA,
    Reply,
    Target,
    bound_waits,
    fuzz_settings,
    leaks_traceback,
    slow_body,
    tried,
)

MAX_BYTES = 1 << 20  # pier.transports.xmlrpc.MAX_BYTES
PROTOCOL_FAULTS = {-32700, -32600, -32601, -32602}
INTERNAL_CODES = {-32603, 16}  # JSON-RPC internal error, VDSM's `unexpected`: never for bad input
SYSTEM_METHODS = ["system.listMethods", "system.methodHelp", "system.methodSignature"]
NAMES = sorted(SCHEMA.legacy) + sorted(SCHEMA.verbs) + SYSTEM_METHODS
LOCAL_FILE = "/etc/passwd"

# -- strategies -------------------------------------------------------------------------------------

xml_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff"
                                 + "".join(map(chr, [*range(1, 9), 11, 12, *range(14, 32)]))), max_size=30)
UUIDS = st.sampled_from(["00000000-0000-0000-0000-000000000000", "6f1e3e4c-1111-4222-8333-444455556666"]) | \
    st.uuids().map(str)
xml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.floats(allow_nan=False, allow_infinity=False),
    xml_text, UUIDS, st.sampled_from(["", "0", "1", "-1", "2147483648", "99999999999999999999", "true"]),
    st.binary(max_size=16).map(xmlrpc.client.Binary),
)
xml_values = st.recursive(
    xml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(xml_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def method_calls(draw: st.DrawFn) -> bytes:
    """A well-formed methodCall of a real name (or not) with random positional params."""
    name = draw(st.sampled_from(NAMES) | xml_text.filter(lambda text: text.strip() != ""))
    verb = SCHEMA.resolve(name)
    count = len(verb.params) if verb else 2
    params = draw(st.lists(xml_values | UUIDS, max_size=count + 1))
    params = bound_waits(name, params)
    return xmlrpc.client.dumps(tuple(params), methodname=name, allow_none=True).encode()


TAGS = ["methodCall", "methodName", "params", "param", "value", "int", "i4", "i8", "string", "boolean", "double",
        "array", "data", "struct", "member", "name", "nil", "base64", "dateTime.iso8601", "bigdecimal", "float"]


@st.composite
def mutated_calls(draw: st.DrawFn) -> bytes:
    """A valid methodCall, then damaged in one or a few ways."""
    body = draw(method_calls())
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "cut", "splice", "rename", "drop", "value", "duplicate"]))
        if how == "flip" and body:
            at = draw(st.integers(0, len(body) - 1))
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
        elif how == "cut":
            body = body[:draw(st.integers(0, len(body)))]
        elif how == "splice":
            at = draw(st.integers(0, len(body)))
            body = body[:at] + draw(st.binary(min_size=1, max_size=12) | st.sampled_from(
                [b"<", b">", b"&", b"&amp", b"]]>", b"<![CDATA[", b"<?pi?>", b"<!-- -->", b"\xff\xfe"])) + body[at:]
        elif how == "rename":
            old, new = draw(st.sampled_from(TAGS)), draw(st.sampled_from(TAGS) | st.sampled_from(["x", "VALUE", ""]))
            body = re.sub(rb"(</?)" + old.encode() + rb"\b", rb"\g<1>" + new.encode(), body,
                          count=draw(st.integers(0, 3)))
        elif how == "drop":
            tag = draw(st.sampled_from(TAGS))
            body = re.sub(rb"</?" + re.escape(tag.encode()) + rb"/?>", b"", body, count=draw(st.integers(1, 2)))
        elif how == "value":
            kind = draw(st.sampled_from(["int", "i4", "i8", "double", "boolean", "dateTime.iso8601", "base64"]))
            text = draw(st.sampled_from(["", " ", "x", "-", "1e999", "-1e999", "nan", "inf", "2", "99999999999999999999",
                                         "0x10", "1_000", "20260101T00:00:00", "!!!", "AAAA=", "true"]))
            value = f"<value><{kind}>{text}</{kind}></value>".encode()
            body = body.replace(b"</params>", b"<param>" + value + b"</param></params>", 1)
        elif how == "duplicate":
            body = body.replace(b"<methodName>", b"<methodName>x</methodName><methodName>", 1)
    return body


ENTITY_TRICKS = [
    # billion laughs
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b']><methodCall><methodName>&lol9;</methodName></methodCall>',
    # quadratic blowup: one big entity referenced many times
    b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "' + b"a" * 50_000 + b'">]><methodCall><methodName>'
    + b"&a;" * 1000 + b"</methodName></methodCall>",
    # external entity
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file://' + LOCAL_FILE.encode() + b'">]>'
    b"<methodCall><methodName>ping</methodName><params><param><value><string>&xxe;</string></value></param>"
    b"</params></methodCall>",
    # external entity over the network (must not be fetched)
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY net SYSTEM "http://127.0.0.1:9/x">]>'
    b"<methodCall><methodName>&net;</methodName></methodCall>",
    # external DTD and parameter entities
    b'<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "file://' + LOCAL_FILE.encode() + b'">'
    b"<methodCall><methodName>ping</methodName></methodCall>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file://' + LOCAL_FILE.encode() + b'"> %p;]>'
    b"<methodCall><methodName>ping</methodName></methodCall>",
    # an internal entity, harmless but still a declaration
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY n "Host.ping2">]><methodCall><methodName>&n;</methodName>'
    b"</methodCall>",
    # XInclude (must be treated as an unknown element, not followed)
    b'<?xml version="1.0"?><methodCall xmlns:xi="http://www.w3.org/2001/XInclude"><methodName>ping</methodName>'
    b'<params><param><value><string><xi:include href="file://' + LOCAL_FILE.encode() + b'" parse="text"/>'
    b"</string></value></param></params></methodCall>",
    # undeclared entity, character references, odd encodings
    b"<methodCall><methodName>&undefined;</methodName></methodCall>",
    b"<methodCall><methodName>&#72;ost.ping2</methodName></methodCall>",
    b"<methodCall><methodName>&#0;</methodName></methodCall>",
    b'<?xml version="1.0" encoding="x-unknown"?><methodCall><methodName>ping</methodName></methodCall>',
    '<?xml version="1.0" encoding="utf-16"?><methodCall><methodName>ping</methodName></methodCall>'.encode("utf-16"),
    b"\xef\xbb\xbf<methodCall><methodName>ping</methodName></methodCall>",
    b'<?xml version="1.1"?><methodCall><methodName>ping</methodName></methodCall>',
    b"<methodResponse><params><param><value><int>1</int></value></param></params></methodResponse>",
    b"<methodCall></methodCall>",
    b"<methodCall><methodName></methodName></methodCall>",
    b"",
]


@st.composite
def deep_calls(draw: st.DrawFn) -> bytes:
    """A methodCall whose one param nests arrays or structs up to 12000 levels (under the size limit)."""
    depth = draw(st.sampled_from([10, 100, 500, 1000, 5000, 12_000]) | st.integers(1, 2000))
    name = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        opener, closer = b"<value><array><data>", b"</data></array></value>"
    else:
        opener, closer = b"<value><struct><member><name>a</name>", b"</member></struct></value>"
    inner = opener * depth + b"<value><int>1</int></value>" + closer * depth
    return b"<methodCall><methodName>" + name.encode() + b"</methodName><params><param>" + inner + \
        b"</param></params></methodCall>"


# -- properties -------------------------------------------------------------------------------------


def check_reply(reply: Reply, sent: bytes) -> None:
    """`reply` is HTTP 200 (or 413 over the limit) with a fault or a VDSM envelope, and nothing leaked."""
    assert not leaks_traceback(reply.body), reply.body[:2000]
    assert b"root:x:0:0" not in reply.body, "a local file was read into the answer"
    if len(sent) > MAX_BYTES:
        assert reply.status == 413, (reply.status, reply.text[:300])
    else:
        assert reply.status == 200, (reply.status, reply.text[:300])
    assert reply.headers.get("content-type", "").startswith("text/xml"), reply.headers
    try:
        params, _ = xmlrpc.client.loads(reply.body, use_builtin_types=True)
    except xmlrpc.client.Fault as fault:
        assert isinstance(fault.faultCode, int) and isinstance(fault.faultString, str), fault
        assert fault.faultCode not in INTERNAL_CODES, f"an internal error for bad input: {fault}"
        assert fault.faultCode in PROTOCOL_FAULTS, fault
        return
    assert reply.status == 200
    assert len(params) == 1, params
    if _method_of(sent) in SYSTEM_METHODS:  # introspection answers plainly, as the standard library does
        assert isinstance(params[0], (str, list)), params
    else:
        check_envelope(params[0])


def _method_of(body: bytes) -> str | None:
    try:
        return xmlrpc.client.loads(body)[1]
    except Exception:  # whatever the standard library's parser makes of a broken body
        return None


def check_envelope(answer: Any) -> None:
    """VDSM's envelope: {'status': {'code', 'message'}} plus at most one payload when the code is 0."""
    assert isinstance(answer, dict) and isinstance(answer.get("status"), dict), answer
    status = answer["status"]
    assert set(status) == {"code", "message"}, status
    assert isinstance(status["code"], int) and isinstance(status["message"], str), status
    assert status["code"] not in INTERNAL_CODES, f"an internal error for bad input: {status}"
    payload = set(answer) - {"status"}
    assert len(payload) <= (1 if status["code"] == 0 else 0), answer


def fuzz(target: Target, body: bytes, label: str) -> None:
    tried(label)
    started = time.monotonic()
    try:
        reply = target.xmlrpc(body)
    except (BrokenPipeError, ConnectionResetError):
        # Over the limit pierd reads and drops up to DRAIN_LIMIT bytes so that the client reads its
        # 413 (test_oversized_body_gets_413); past that it closes, and a client still sending sees it.
        assert len(body) > DRAIN_LIMIT, "the connection broke on a body pierd drains"
    else:
        check_reply(reply, body)
    assert time.monotonic() - started < 5, "the answer took longer than 5 s"
    target.assert_serving()


@fuzz_settings(80)
@given(body=st.binary(max_size=300))
def test_random_bytes(target: Target, body: bytes) -> None:
    fuzz(target, body, "xmlrpc random bytes")


@fuzz_settings(100)
@given(body=method_calls())
def test_real_names_random_params(target: Target, body: bytes) -> None:
    fuzz(target, body, "xmlrpc real names, random params")


@fuzz_settings(120)
@given(body=mutated_calls())
def test_mutated_method_calls(target: Target, body: bytes) -> None:
    fuzz(target, body, "xmlrpc mutated methodCalls")


@pytest.mark.parametrize("body", ENTITY_TRICKS, ids=range(len(ENTITY_TRICKS)))
def test_entity_and_dtd_tricks(target: Target, body: bytes) -> None:
    fuzz(target, body, "xmlrpc entity and DTD tricks")


@fuzz_settings(20)
@given(body=deep_calls())
def test_deep_nesting(target: Target, body: bytes) -> None:
    fuzz(target, body, "xmlrpc deep nesting")


@fuzz_settings(20)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO"]),
       body=st.none() | method_calls())
def test_other_http_methods(target: Target, method: str, body: bytes | None) -> None:
    """Anything but POST gets 405 with Allow: POST (and a fault, except for HEAD)."""
    tried("xmlrpc other HTTP methods")
    reply = target.request(method, "/RPC2", body, content_type="text/xml")
    assert reply.status == 405, (reply.status, reply.text[:300])
    assert reply.headers.get("allow") == "POST", reply.headers
    assert not leaks_traceback(reply.body)
    if method != "HEAD":
        with pytest.raises(xmlrpc.client.Fault) as fault:
            xmlrpc.client.loads(reply.body)
        assert fault.value.faultCode == -32600
    target.assert_serving()


@fuzz_settings(6)
@given(size=st.sampled_from([MAX_BYTES - 100, MAX_BYTES + 1]) | st.integers(MAX_BYTES - 2000, MAX_BYTES + 2000))
def test_bodies_near_the_limit(target: Target, size: int) -> None:
    """At the limit a call is answered; past it, 413 with a fault."""
    head = b"<methodCall><methodName>ping</methodName><params><param><value><string>"
    tail = b"</string></value></param></params></methodCall>"
    body = head + b"a" * max(size - len(head) - len(tail), 0) + tail
    fuzz(target, body, "xmlrpc bodies near the limit")


# -- defects this suite found, kept as regression tests ------------------------------------------------


@pytest.mark.parametrize("method", ["system.methodHelp", "system.methodSignature"])
@pytest.mark.parametrize("value", ["<array><data/></array>", "<struct></struct>", "<base64>AA==</base64>"])
def test_introspection_of_a_non_string_name(target: Target, method: str, value: str) -> None:
    body = (f"<methodCall><methodName>{method}</methodName><params><param><value>{value}</value></param></params>"
            "</methodCall>").encode()
    reply = target.xmlrpc(body)
    assert reply.status == 200, reply.status
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(reply.body)
    assert fault.value.faultCode in (-32601, -32602)


def test_oversized_body_gets_413(target: Target) -> None:
    size = 2 * MAX_BYTES
    reply = target.request("POST", "/RPC2", slow_body(size), content_type="text/xml",
                               headers={"Content-Length": str(size)})
    assert reply.status == 413
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(reply.body)
    assert fault.value.faultCode == -32600


def test_deeply_nested_params_to_a_changing_verb(target: Target) -> None:
    depth = 600
    nested = b"<value><struct><member><name>a</name>" * depth + b"<value><int>1</int></value>" + \
        b"</member></struct></value>" * depth
    body = b"<methodCall><methodName>create</methodName><params><param>" + nested + b"</param></params></methodCall>"
    reply = target.xmlrpc(body)
    check_reply(reply, body)
