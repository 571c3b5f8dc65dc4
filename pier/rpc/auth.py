"""Who is calling: identities, the credentials that prove them, and the roles they carry.

A caller proves who it is in one of three ways, each giving an `Identity` with a role (viewer,
operator or admin, as the schema declares per verb):
- a client certificate (mutual TLS) whose SHA-256 fingerprint is in the trust store;
- a bearer token (`Authorization: Bearer pier_<id>_<secret>`), kept hashed, with an expiry and
  revocable at once;
- the peer credentials of a local unix-socket connection (root, or a member of the admin group).
The stores live in sqlite in the state directory, so `pier trust` and `pier token` take effect
for the next call without a restart. Transports call `Authenticator.identify` with what the wire
gave them and put the result in the CallContext; the registry checks the role. A session that
outlives one call (a WebSocket or STOMP connection, an event stream, a long-poll) calls
`Credentials.watch` to learn at once when its credential is revoked, and ends.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import itertools
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pier.rpc.errors import Forbidden, InvalidParams, NoSuchCredential, TooManyRequests, Unauthenticated
from pier.rpc.limits import FailedLogins
from pier.rpc.schema import ROLES
from pier.rpc.store import open_state

log = logging.getLogger("pier.auth")

TOKEN_PREFIX = "pier_"
# Where the HTTP listener leaves the caller's identity (or why there is none) for the WSGI apps.
WSGI_IDENTITY = "pier.identity"
WSGI_AUTH_ERROR = "pier.auth_error"
_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Identity:
    """A proven caller: a name for logs and the audit log, its role, and how it was proven.

    `credential` names the token or certificate behind it and `generation` the state of the
    credential stores it was checked against, so that a connection that keeps its identity
    (WebSocket, STOMP) is checked again after any revocation.
    """

    name: str
    role: str
    how: str
    credential: str = ""
    expires: float | None = None
    generation: int = 0
    local_uid: int | None = None  # the uid of a caller on the local socket

    @property
    def local_root(self) -> bool:
        """Root on the local socket: the host's own admin, whom no limit applies to."""
        return self.local_uid == 0

    def allows(self, role: str) -> bool:
        """True when this identity may call a verb that needs `role`."""
        return _RANK[self.role] >= _RANK[role]


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def certificate_der(pem: str) -> bytes:
    """The DER bytes of one PEM certificate; InvalidParams when it is not one."""
    try:
        return ssl.PEM_cert_to_DER_cert(pem.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidParams(f"certificate: not a PEM certificate ({exc})", data={"field": "params.certificate"}) from None


def _check_role(role: str) -> str:
    if role not in _RANK:
        raise InvalidParams(f"role: {role!r} is not one of {', '.join(ROLES)}", data={"field": "params.role"})
    return role


class Credentials:
    """Tokens and trusted certificates, in sqlite. `clock` gives the time in seconds since the
    epoch that creation, expiry and revocation are measured by."""

    def __init__(self, db_path: str, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._db = open_state(db_path)
        self._db.execute("CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL, role TEXT NOT NULL,"
                         " name TEXT NOT NULL, created REAL NOT NULL, expires REAL, revoked REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS trusted (fingerprint TEXT PRIMARY KEY, role TEXT NOT NULL,"
                         " name TEXT NOT NULL, subject TEXT NOT NULL, not_after TEXT, added REAL NOT NULL,"
                         " pem TEXT NOT NULL)")
        self._lock = threading.Lock()
        self.generation = 0  # bumped by every revocation; identities from before are checked again
        self.on_trust: Any = None  # called with a certificate's PEM when it is trusted (the TLS context)
        self._rechecked: dict[str, Identity] = {}
        self._proven: dict[str | bytes, Identity] = {}  # by token text or certificate: no sqlite read a call
        self._watchers: dict[str, dict[int, Callable[[str], None]]] = {}  # by credential
        self._watch_ids = itertools.count(1)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def current(self, identity: Identity) -> Identity:
        """`identity` as the stores stand now; Unauthenticated when its credential was revoked
        or has expired since it was checked."""
        if identity.expires is not None and identity.expires < self._clock():
            raise Unauthenticated(f"the credentials of {identity.name} have expired")
        if identity.generation == self.generation or not identity.credential:
            return identity
        generation = self.generation
        known = self._rechecked.get(identity.credential)
        if known is None or known.generation != generation:
            kind, _, key = identity.credential.partition(":")
            known = self._token_by_id(key) if kind == "token" else self._certificate_by_fingerprint(key)
            self._rechecked[identity.credential] = known
        return known

    def watch(self, identity: Identity, revoked: Callable[[str], None]) -> Callable[[], bool]:
        """Call `revoked(reason)` once when the credential behind `identity` is revoked or no longer
        trusted (at once when that already happened); returns a function that stops watching (True
        when it still was).

        `revoked` runs on the thread that revokes (or on this one) and must not block. An identity
        without a credential (a local peer) is never revoked.
        """
        credential = identity.credential
        if not credential:
            return _nothing
        key = next(self._watch_ids)
        with self._lock:
            self._watchers.setdefault(credential, {})[key] = revoked

        def unwatch() -> bool:
            with self._lock:
                watchers = self._watchers.get(credential, {})
                if watchers.pop(key, None) is None:
                    return False
                if not watchers:
                    del self._watchers[credential]
                return True

        try:
            self.current(identity)
        except Unauthenticated as exc:  # revoked before it was watched
            if unwatch():
                revoked(exc.message)
        return unwatch

    def _revoked(self, credential: str, reason: str) -> None:
        with self._lock:
            watchers = list(self._watchers.pop(credential, {}).values())
        if watchers:
            log.info("%s: ending %d session(s) that authenticated with it", reason, len(watchers))
        for revoked in watchers:
            try:
                revoked(reason)
            except Exception:  # one session's failure must not keep the others open
                log.exception("ending a session after '%s' failed", reason)

    # -- tokens -----------------------------------------------------------------------------------

    def create_token(self, role: str, name: str = "", expires_in_days: float | None = None) -> dict[str, Any]:
        """A new bearer token; the secret is in the result and nowhere else."""
        _check_role(role)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + expires_in_days * 86400 if expires_in_days else None
        with self._lock:
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
                             (token_id, _hash(secret), role, name, now, expires))
        return {"tokenID": token_id, "token": f"{TOKEN_PREFIX}{token_id}_{secret}", "role": role, "name": name,
                "created": now, "expires": expires}

    def list_tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, role, name, created, expires, revoked FROM tokens ORDER BY created")
            return [{"tokenID": r[0], "role": r[1], "name": r[2], "created": r[3], "expires": r[4], "revoked": r[5]}
                    for r in rows.fetchall()]

    def revoke_token(self, token_id: str) -> None:
        with self._lock:
            changed = self._db.execute("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
                                       (self._clock(), token_id)).rowcount
            self.generation += changed
        if not changed:
            raise NoSuchCredential(f"no active token {token_id!r}", data={"tokenID": token_id})
        self._revoked(f"token:{token_id}", f"token {token_id} was revoked")

    def known(self, proof: str | bytes) -> Identity | None:
        """The identity `proof` gave since the last revocation, while it has not expired."""
        known = self._proven.get(proof)
        if known is None or known.generation != self.generation or (
                known.expires is not None and known.expires < self._clock()):
            return None
        return known

    def _remember(self, proof: str | bytes, identity: Identity) -> Identity:
        if len(self._proven) >= 1024:
            self._proven.clear()
        self._proven[proof] = identity
        return identity

    def token_identity(self, token: str) -> Identity:
        """The identity a bearer token proves; Unauthenticated when it proves none."""
        known = self.known(token)
        if known is not None:
            return known
        token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
        with self._lock:
            row = self._db.execute("SELECT hash FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if not token.startswith(TOKEN_PREFIX) or row is None or not hmac.compare_digest(row[0], _hash(secret)):
            raise Unauthenticated("the bearer token is not valid")
        return self._remember(token, self._token_by_id(token_id))

    def _token_by_id(self, token_id: str) -> Identity:
        with self._lock:
            generation = self.generation
            row = self._db.execute("SELECT role, name, expires, revoked FROM tokens WHERE id = ?",
                                   (token_id,)).fetchone()
        if row is None or row[3] is not None:
            raise Unauthenticated(f"token {token_id} was revoked")
        if row[2] is not None and row[2] < self._clock():
            raise Unauthenticated(f"token {token_id} has expired")
        return Identity(f"token {token_id}" + (f" ({row[1]})" if row[1] else ""), row[0], "token",
                        f"token:{token_id}", row[2], generation)

    # -- trusted certificates ------------------------------------------------------------------

    def trust(self, pem: str, role: str, name: str = "") -> dict[str, Any]:
        """Trust a client certificate with `role`; returns its record."""
        _check_role(role)
        der = certificate_der(pem)
        subject, not_after = _describe(der)
        record = {"fingerprint": fingerprint(der), "role": role, "name": name or subject, "subject": subject,
                  "notAfter": not_after, "added": self._clock()}
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO trusted VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (*record.values(), ssl.DER_cert_to_PEM_cert(der)))
            self.generation += 1  # it may have had another role
        if self.on_trust is not None:
            self.on_trust(ssl.DER_cert_to_PEM_cert(der))
        return record

    def trusted_pems(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT pem FROM trusted").fetchall()]

    def list_trusted(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT fingerprint, role, name, subject, not_after, added FROM trusted"
                                    " ORDER BY added").fetchall()
        return [{"fingerprint": r[0], "role": r[1], "name": r[2], "subject": r[3], "notAfter": r[4], "added": r[5]}
                for r in rows]

    def distrust(self, fingerprint_text: str) -> None:
        print_ = fingerprint_text.upper()
        with self._lock:
            changed = self._db.execute("DELETE FROM trusted WHERE fingerprint = ?", (print_,)).rowcount
            self.generation += changed
        if not changed:
            raise NoSuchCredential(f"no trusted certificate {fingerprint_text}", data={"fingerprint": fingerprint_text})
        self._revoked(f"certificate:{print_}", f"the client certificate {print_[:23]}... is no longer trusted")

    def certificate_identity(self, der: bytes) -> Identity:
        """The identity a client certificate proves; Unauthenticated when it is not trusted."""
        return self.known(der) or self._remember(der, self._certificate_by_fingerprint(fingerprint(der)))

    def _certificate_by_fingerprint(self, print_: str) -> Identity:
        with self._lock:
            generation = self.generation
            row = self._db.execute("SELECT role, name FROM trusted WHERE fingerprint = ?", (print_,)).fetchone()
        if row is None:
            raise Unauthenticated(f"the client certificate {print_[:23]}... is not trusted; an admin can add it "
                                  "with 'pier trust add'")
        return Identity(f"certificate {row[1]}", row[0], "certificate", f"certificate:{print_}", None, generation)


class Authenticator:
    """Turns what a wire knows about its peer into an Identity, or refuses.

    Failed authentications are counted per source address (`failures`): past the limit, new
    credentials from that source are refused without being looked at, until the window has passed.
    """

    def __init__(self, credentials: Credentials, *, admin_group: str = "pier-admin",
                 failures: FailedLogins | None = None) -> None:
        self.credentials = credentials
        self.admin_group = admin_group
        self.failures = failures or FailedLogins()

    def identify(self, *, authorization: str | None = None, certificate: bytes | None = None,
                 peer_uid: int | None = None, peer_gid: int | None = None, source: str | None = None) -> Identity:
        """The caller's identity from (in this order) a client certificate, a bearer token, or
        unix-socket peer credentials. Raises Unauthenticated when none of them proves one, and
        TooManyRequests when `source` (the peer's address, where the wire has one) failed too often
        lately: then only a credential proven before (since the last revocation) still passes, so
        that guessing stops while a good client behind the same address goes on."""
        if certificate or authorization:
            token = "" if certificate else _token_of(authorization or "")
            proof = certificate or token
            if source is not None:
                try:
                    self.failures.check(source)
                except TooManyRequests:
                    known = self.credentials.known(proof)
                    if known is None:
                        raise
                    return known
            try:
                if certificate:
                    return self.credentials.certificate_identity(certificate)
                return self.credentials.token_identity(token)
            except Unauthenticated:
                if source is not None:
                    self.failures.failed(source)
                raise
        if peer_uid is not None:
            return self.peer_identity(peer_uid, peer_gid)
        raise Unauthenticated("no credentials: present a trusted client certificate or a bearer token "
                              "(an admin makes one with 'pier token create --role viewer')")

    def watch(self, identity: Identity, revoked: Callable[[str], None]) -> Callable[[], bool]:
        """See `Credentials.watch`: a session learns when the credential it was opened with is revoked."""
        return self.credentials.watch(identity, revoked)

    def peer_identity(self, uid: int, gid: int | None = None) -> Identity:
        """Local callers on the unix socket: root and the admin group are admins; others are refused."""
        if uid == 0:
            return Identity("local root", "admin", "peer-credentials", local_uid=0)
        try:
            group = grp.getgrnam(self.admin_group)
        except KeyError:
            group = None
        if group is not None and (gid == group.gr_gid or _user_in_group(uid, group)):
            return Identity(f"local uid {uid}", "admin", "peer-credentials", local_uid=uid)
        raise Forbidden(f"local uid {uid} is neither root nor in the {self.admin_group} group")


def _nothing() -> bool:
    return False


def _token_of(authorization: str) -> str:
    """The token in `Bearer <token>`, or in `Basic` credentials whose password is a token (so that an
    old client that can only put a user and password in its URL, like xmlrpc.client, can pass one)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            pass
    raise Unauthenticated("the Authorization header must be 'Bearer <token>' (or Basic with the token as password)")


def _user_in_group(uid: int, group: grp.struct_group) -> bool:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name in group.gr_mem
    except KeyError:
        return False


def _hash(secret: str) -> str:
    # Tokens carry 256 random bits, so a plain hash is enough: there is nothing to guess.
    return hashlib.sha256(secret.encode()).hexdigest()


def _describe(der: bytes) -> tuple[str, str]:
    """A certificate's subject and expiry, for listings."""
    from cryptography import x509

    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidParams(f"certificate: cannot be read ({exc})", data={"field": "params.certificate"}) from None
    return certificate.subject.rfc4514_string(), certificate.not_valid_after_utc.isoformat()
