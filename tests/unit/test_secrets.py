"""Secrets the schema marks are kept out of what pierd stores and logs: the STOMP reply cache
keeps a Token.create answer without its token (and says so to a redelivery), forgets every entry
after its ttl even when no request comes, and the log line of a dropped answer has no token."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pier.facade.openapi import openapi_document
from pier.rpc.auth import Identity
from pier.rpc.registry import CallContext
from pier.rpc.schema import Schema
from pier.transports.stomp_replies import Replies, ReplyCache
from tests.unit.conftest import Stack

ADMIN = CallContext("stomp", "/temp-queue/engine", identity=Identity("broker", "admin", "broker"))


def token_request(request_id: object = "t1") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": "Token.create", "params": {"role": "viewer", "name": "x"},
                       "id": request_id}).encode()


def test_the_schema_marks_the_token_of_token_create_secret(schema: Schema) -> None:
    assert schema.verbs["Token.create"].result_secrets == {"token"}
    assert not any(verb.result_secrets for name, verb in schema.verbs.items() if name != "Token.create")
    assert "secret" not in schema.defs["NewToken"]["properties"]["token"]  # Pier's mark, not JSON Schema
    assert '"secret"' not in json.dumps(openapi_document(schema))


def test_secret_marks_are_found_through_refs_and_secret_results_refused_on_tasks() -> None:
    document = {"$defs": {"Ticket": {"type": "object", "properties": {"ticket": {"type": "string", "secret": True},
                                                                      "secret": {"type": "string"}}}},
                "verbs": {"Console.open": {"params": {"password": {"type": "string", "secret": True}},
                                           "returns": {"type": "array", "items": {"$ref": "#/$defs/Ticket"}}}}}
    verb = Schema(document).verbs["Console.open"]
    assert verb.secrets == ["password"] and verb.result_secrets == {"ticket"}
    document["verbs"]["Console.open"]["task"] = True
    with pytest.raises(ValueError, match="a task verb cannot have secret results"):
        Schema(document)
    document["verbs"]["Console.open"]["returns"] = {"type": "object"}
    assert Schema(document).verbs["Console.open"].secrets == ["password"]  # a secret param: redacted in its task


def test_image_sharing_keeps_its_headers_secret(schema: Schema) -> None:
    for name in ("Image.upload", "Image.download"):
        assert schema.verbs[name].secrets == ["headers"]


def test_a_redelivered_token_create_gets_its_answer_without_the_secret(stack: Stack, tmp_path: Path) -> None:
    replies = Replies(stack.jsonrpc, str(stack.db))
    try:
        first = replies.answer(stack.jsonrpc.parse(token_request()), "/temp-queue/engine", ADMIN)
        secret = first["result"]["token"].split("_", 2)[2]
        again = replies.answer(stack.jsonrpc.parse(token_request()), "/temp-queue/engine", ADMIN)
    finally:
        replies.stop()
        replies.close()
    assert again["id"] == "t1" and "result" not in again
    assert again["error"]["code"] == 99 and "secrets (token) that are not kept" in again["error"]["message"]
    assert again["error"]["data"]["result"] == {**first["result"], "token": "***"}
    assert len(stack.credentials.list_tokens()) == 1  # not run twice
    kept = sqlite3.connect(stack.db).execute("SELECT reply FROM stomp_requests").fetchall()
    assert len(kept) == 1 and secret not in kept[0][0]


def test_the_log_text_of_a_dropped_answer_has_no_secret(stack: Stack) -> None:
    replies = Replies(stack.jsonrpc, str(stack.db))
    try:
        batch = stack.jsonrpc.parse(b"[" + token_request(1) + b',{"jsonrpc": "2.0", "method": "Host.ping2", "id": 2}]')
        answer = replies.answer(batch, "", ADMIN)
        logged = json.loads(replies.loggable(batch, answer))
    finally:
        replies.stop()
        replies.close()
    secret = answer[0]["result"]["token"]
    assert logged[0]["result"]["token"] == "***" and logged[0]["result"]["tokenID"] == secret.split("_")[1]
    assert logged[1] == {"jsonrpc": "2.0", "result": True, "id": 2}
    not_json = stack.jsonrpc.parse(b"{not json")
    assert json.loads(replies.loggable(not_json, not_json.refusal)) == not_json.refusal


def test_cache_entries_go_after_the_ttl_with_no_further_request(tmp_path: Path) -> None:
    db = tmp_path / "pier.db"
    cache = ReplyCache(str(db), ttl=0.5)
    try:
        assert cache.begin("a") is None
        cache.finish("a", '{"result": true}')
        deadline = time.monotonic() + 15
        while sqlite3.connect(db).execute("SELECT COUNT(*) FROM stomp_requests").fetchone()[0]:
            assert time.monotonic() < deadline, "an entry outlived its ttl by 15 s"
            time.sleep(0.1)
        assert cache.begin("b") is None  # and the timer is set again for the next one
    finally:
        cache.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "stomp-reply-cache"]
