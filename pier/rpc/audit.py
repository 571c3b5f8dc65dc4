"""The audit log: every call of a verb that changes something, who made it, and how it ended.

Kept in sqlite in the state directory, written by the registry after each changing call, and for
each refused one (unauthenticated, without the role, limited or with invalid params: those are
counted per source and minute rather than written one by one), read by admins through
`Host.getAuditLog` and `pier audit`. Params are stored with secrets redacted: those the schema marks `secret: true`, and any whose name says it
holds one. `redact` is also what the STOMP reply cache and log lines use on results.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from pier.rpc.store import inserted_rowid, open_state

REDACTED = "***"
_SECRET_NAMES = re.compile(r"pass(word|code|phrase)?|secret|token|private.?key|authorization|cookie", re.IGNORECASE)


MAX_DEPTH = 32
MAX_REFUSED_ROWS = 1000  # refused-call rows in one minute before the rest share one


def redact(value: Any, secret_names: Iterable[str] = (), depth: int = 0, *, guess: bool = True) -> Any:
    """`value` with every field named in `secret_names` (at any depth) replaced by '***', and with
    `guess` also every field whose name says it holds a secret; what is nested deeper than
    MAX_DEPTH is recorded as a note, not followed (params can nest far deeper than Python's stack)."""
    names = secret_names if isinstance(secret_names, (set, frozenset)) else set(secret_names)
    if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
        return f"(nested deeper than {MAX_DEPTH} levels; not recorded)"
    if isinstance(value, dict):
        return {key: REDACTED if (key in names or guess and _SECRET_NAMES.search(str(key))) and item is not None
                else redact(item, names, depth + 1, guess=guess) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, names, depth + 1, guess=guess) for item in value]
    return value


class AuditLog:
    """Append-only records of changing calls, in sqlite."""

    def __init__(self, db_path: str, *, retention: float = 90 * 86400.0) -> None:
        self.retention = retention
        self._db = open_state(db_path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,"
            " who TEXT NOT NULL, role TEXT, via TEXT NOT NULL, peer TEXT NOT NULL, verb TEXT NOT NULL,"
            " target TEXT, params TEXT NOT NULL, outcome TEXT NOT NULL, message TEXT NOT NULL, ms REAL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(audit)")}
        for column, kind in (("refused", "INTEGER NOT NULL DEFAULT 0"), ("count", "INTEGER NOT NULL DEFAULT 1")):
            if column not in columns:  # a database of an older pierd
                self._db.execute(f"ALTER TABLE audit ADD COLUMN {column} {kind}")
        self._lock = threading.Lock()
        self._minute = 0
        self._open: dict[tuple[str, ...], int] = {}  # this minute's refused rows, by who refused what
        self._db.execute("DELETE FROM audit WHERE time < ?", (time.time() - retention,))

    def record(self, *, who: str, role: str | None, via: str, peer: str, verb: str, target: str | None,
               params: dict[str, Any], outcome: str, message: str = "", ms: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (time, who, role, via, peer, verb, target, params, outcome, message, ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), who, role, via, peer, verb, target, json.dumps(params, default=str), outcome, message,
                 ms),
            )

    def refused(self, *, who: str, role: str | None, via: str, source: str, verb: str, outcome: str,
                message: str) -> None:
        """Record a refused change. Refusals are counted, one row per source, caller, verb and
        outcome in each minute (and past MAX_REFUSED_ROWS rows in a minute, one row for all other
        sources), so that a flood of them cannot fill the disk."""
        now = time.time()
        key = (source, who, via, verb, outcome)
        with self._lock:
            if int(now // 60) != self._minute:
                self._minute, self._open = int(now // 60), {}
            if key not in self._open and len(self._open) >= MAX_REFUSED_ROWS:
                key = source, who, via, verb, outcome = ("*", "*", "*", verb, outcome)
            seq = self._open.get(key)
            if seq is not None:
                self._db.execute("UPDATE audit SET count = count + 1 WHERE seq = ?", (seq,))
                return
            cursor = self._db.execute(
                "INSERT INTO audit (time, who, role, via, peer, verb, target, params, outcome, message, ms, refused)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL, '{}', ?, ?, NULL, 1)",
                (now, who, role, via, source, verb, outcome, message))
            self._open[key] = inserted_rowid(cursor)

    def read(self, after: int = 0, limit: int = 100, verb: str | None = None, newest: bool = False,
             refused: bool = False) -> dict[str, Any]:
        """Records with seq > `after`, optionally of one verb or only refused ones, oldest first:
        the first `limit` of them, or with `newest` the last `limit`."""
        query = ("SELECT seq, time, who, role, via, peer, verb, target, params, outcome, message, ms, refused, count"
                 " FROM audit WHERE seq > ?" + (" AND verb = ?" if verb else "") + (" AND refused" if refused else "")
                 + f" ORDER BY seq {'DESC' if newest else ''} LIMIT ?")
        args = (after, verb, limit) if verb else (after, limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        if newest:
            rows.reverse()
        entries = [{"seq": r[0], "time": r[1], "who": r[2], "role": r[3], "via": r[4], "peer": r[5], "verb": r[6],
                    "target": r[7], "params": json.loads(r[8]), "outcome": r[9], "message": r[10], "ms": r[11],
                    "refused": bool(r[12]), "count": r[13]}
                   for r in rows]
        return {"entries": entries, "last": entries[-1]["seq"] if entries else after}

    def close(self) -> None:
        with self._lock:
            self._db.close()
