"""What pierd answers to one STOMP request frame, and the reply cache that makes a request the
broker delivers twice run once.

A request frame is acknowledged only after its reply is sent, so the broker delivers it again
when pierd dies (or loses the broker) in between. Each request that changes something is
recorded in sqlite (table `stomp_requests`) before it runs and its reply after, keyed by the
sender's credential (nobody is answered with another's reply), the frame's `reply-to` and the
request object itself (id, method and params, so a client that reuses an id for another request
is not answered with the old reply); a batch is recorded element by element. A request delivered
again whose reply is known gets that reply again; one started by an
earlier pierd process that has no reply (pierd died while running it) is not run again but
answered with error 99 (`recovery`) telling the caller to check the state. Read-only verbs skip
the cache: running them twice is harmless and costs less than two sqlite writes. Everything else
is `JsonRpc`'s, the wire's one error mapper; answers are passed as data, and encoded only to be
kept in the cache.

The cache keeps no secret: a reply whose result holds fields the schema marks secret (the token
of a `Token.create`) is kept as error 99 saying that the call succeeded and that its secrets are
not kept, with the result, redacted, in its data; that is what a redelivery gets. Entries go
`ttl` seconds after their request came, whether or not more requests come: a timer the cache owns
(one short-lived thread at a time, only while there are entries; cancelled and joined by
`close`) deletes them, at most a tenth of the ttl (at most 30 s) late.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from pier.rpc.audit import redact
from pier.rpc.errors import InternalError, Recovering
from pier.rpc.jsonrpc import Answer, JsonRpc, Message, error_object, loads, responses_of
from pier.rpc.registry import CallContext
from pier.rpc.schema import Verb
from pier.rpc.store import open_state

log = logging.getLogger("pier.transports.stomp")


def request_key(reply_to: str, request: dict[str, Any], sender: str) -> str:
    """The cache key of one JSON-RPC request object sent by `sender` (its credential) with `reply_to`."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{sender}\0{reply_to}\0{text}".encode()).hexdigest()


class Started:
    """`ReplyCache.begin` found the request started, by this process (`here`) or an earlier one."""

    def __init__(self, at: float, here: bool) -> None:
        self.at = at
        self.here = here


class ReplyCache:
    """Requests seen in the last `ttl` seconds and their replies, in sqlite at `db_path`."""

    def __init__(self, db_path: str, *, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self.instance = uuid.uuid4().hex
        self._db = open_state(db_path)
        self._db.execute("CREATE TABLE IF NOT EXISTS stomp_requests (key TEXT PRIMARY KEY, started REAL NOT NULL,"
                         " instance TEXT NOT NULL, reply TEXT)")
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._timer: threading.Timer | None = None
        self._closed = False
        with self._lock:
            self._expire()  # what an earlier pierd left

    def begin(self, key: str) -> str | Started | None:
        """Record request `key` as started and return None; or, when it was seen before, its
        reply (a str) or `Started` when it has none yet."""
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT started, instance, reply FROM stomp_requests WHERE key = ? AND started >= ?",
                                   (key, now - self.ttl)).fetchone()
            if row is None:
                self._db.execute("INSERT OR REPLACE INTO stomp_requests (key, started, instance) VALUES (?, ?, ?)",
                                 (key, now, self.instance))
                self._running[key] = threading.Event()
                self._arm(now + self.ttl)
                return None
        started, instance, reply = row
        return reply if reply is not None else Started(started, instance == self.instance)

    def finish(self, key: str, reply: str) -> None:
        """Record the reply of a request `begin` recorded."""
        with self._lock:
            self._db.execute("UPDATE stomp_requests SET reply = ? WHERE key = ?", (reply, key))
            done = self._running.pop(key, None)
        if done is not None:
            done.set()

    def wait(self, key: str, timeout: float) -> str | None:
        """The reply of a request this process is running, once it has one (None on timeout)."""
        with self._lock:
            running = self._running.get(key)
        if running is not None and not running.wait(timeout):
            return None
        with self._lock:
            row = self._db.execute("SELECT reply FROM stomp_requests WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _arm(self, at: float) -> None:
        """Have the timer delete what has expired at `at` (holding the lock; no-op when it is set)."""
        if self._timer is not None or self._closed:
            return
        self._timer = threading.Timer(max(0.0, at - time.time()) + min(self.ttl / 10, 30.0), self._on_timer)
        self._timer.name = "stomp-reply-cache"
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        """On the timer's thread."""
        with self._lock:
            if self._closed:
                return
            self._timer = None
            self._expire()

    def _expire(self) -> None:
        """Delete the entries older than the ttl; set the timer for the oldest left (holding the lock)."""
        now = time.time()
        deleted = self._db.execute("DELETE FROM stomp_requests WHERE started < ?", (now - self.ttl,)).rowcount
        if deleted:
            log.debug("reply cache: dropped %d entries older than %.0f s", deleted, self.ttl)
        oldest = self._db.execute("SELECT MIN(started) FROM stomp_requests").fetchone()[0]
        if oldest is not None:
            self._arm(oldest + self.ttl)

    def close(self) -> None:
        """Stop the timer and close sqlite."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        with self._lock:
            self._db.close()


class Replies:
    """Answers request frames: JsonRpc's answer, through the reply cache for requests that change something."""

    def __init__(self, jsonrpc: JsonRpc, db_path: str, *, ttl: float = 300.0, max_age: float = 180.0) -> None:
        self._jsonrpc = jsonrpc
        self._cache = ReplyCache(db_path, ttl=ttl)
        self.max_age = max_age
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop waiting for replies of requests delivered twice (pierd is stopping)."""
        self._stopping.set()

    def close(self) -> None:
        self._cache.close()

    def stale(self, headers: dict[str, str]) -> str | None:
        """Why a request frame is too old to run (`expires`, or `timestamp` older than `max_age`), or None."""
        now = time.time() * 1000
        expires = _number(headers.get("expires"))
        if expires and now > expires:
            return f"its deadline (expires) passed {(now - expires) / 1000:.1f} s ago"
        sent = _number(headers.get("timestamp"))
        if sent and self.max_age and now - sent > self.max_age * 1000:
            return f"it was sent {(now - sent) / 1000:.0f} s ago, more than {self.max_age:.0f} s"
        return None

    def answer(self, message: Message, reply_to: str, context: CallContext) -> Answer:
        """The answer to a frame's parsed message (None when there is nothing to send back)."""
        if message.refusal is not None or not any(self._changes(item) for item in message.requests):
            return self._jsonrpc.answer(message, context)
        if not message.batch:
            return self._answer_item(message.requests[0], reply_to, context)
        answers = [answer for answer in (self._answer_item(item, reply_to, context) for item in message.requests)
                   if answer is not None]
        return answers or None

    def _verb(self, item: Any) -> Verb | None:
        """The verb `item` calls, when it is a request object of a declared one."""
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            return None
        return self._jsonrpc.registry.schema.resolve(item["method"])

    def _changes(self, item: Any) -> bool:
        """Whether `item` is a request (it has an id) of a verb that changes something."""
        declared = self._verb(item)
        return declared is not None and "id" in item and not declared.readonly

    def _kept(self, declared: Verb | None, response: dict[str, Any]) -> str:
        """What the cache keeps of `response`: itself, or when its result holds secrets, error 99
        saying so, with the result redacted."""
        if declared is None or not declared.result_secrets or "result" not in response:
            return self._jsonrpc.encode(response)
        secrets = sorted(declared.result_secrets)
        ran = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        error = Recovering(f"{declared.name} was delivered again; it ran at {ran} and succeeded, but its answer "
                           f"held secrets ({', '.join(secrets)}) that are not kept, so it cannot be sent again. "
                           "data.result is that answer with them redacted",
                           data={"method": declared.name, "ran": ran, "redacted": secrets,
                                 "result": redact(response["result"], secrets, guess=False)})
        return self._jsonrpc.encode(error_object(error, response.get("id")))

    def loggable(self, message: Message, answer: Answer) -> str:
        """`answer` to `message` as text, with the secrets of its results redacted, for a log line."""
        secrets = {name for item in message.requests if (verb := self._verb(item)) is not None
                   for name in verb.result_secrets}
        if secrets:
            redacted = [{**response, "result": redact(response["result"], secrets, guess=False)}
                        if "result" in response else response for response in responses_of(answer)]
            answer = redacted if isinstance(answer, list) else redacted[0] if redacted else answer
        return "" if answer is None else self._jsonrpc.encode(answer)

    def _answer_item(self, item: Any, reply_to: str, context: CallContext) -> dict[str, Any] | None:
        if not self._changes(item):
            return self._jsonrpc.answer_one(item, context)
        method, request_id = item["method"], item["id"]
        key = request_key(reply_to, item, context.identity.credential if context.identity else "")
        known = self._cache.begin(key)
        if known is None:
            response = error_object(InternalError("the request failed"), request_id)
            try:
                response = self._jsonrpc.answer_one(item, context) or response
            finally:
                self._cache.finish(key, self._kept(self._verb(item), response))
            return response
        if isinstance(known, Started) and known.here:
            log.info("STOMP: %s (id %r) was delivered again while it runs; waiting for its reply", method, request_id)
            known = self._wait(key)
            if known is None:
                return error_object(InternalError(f"{method} with this id is still running"), request_id)
        if isinstance(known, str):
            log.info("STOMP: %s (id %r) was delivered again; sending its reply again", method, request_id)
            return loads(known)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(known.at))
        log.warning("STOMP: %s (id %r) was delivered again after the agent restarted while running it; "
                    "not running it again", method, request_id)
        error = Recovering(f"the agent restarted while running {method} (started {started}); it may or may not "
                           "have taken effect: check the state before calling it again",
                           data={"method": method, "started": started})
        return error_object(error, request_id)

    def _wait(self, key: str) -> str | None:
        deadline = time.monotonic() + self._cache.ttl
        while not self._stopping.is_set() and time.monotonic() < deadline:
            reply = self._cache.wait(key, 1.0)
            if reply is not None:
                return reply
        return None


def _number(text: str | None) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0
