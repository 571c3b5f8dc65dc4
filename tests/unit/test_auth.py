"""Credentials, roles, the audit log and rate limits, through the real registry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pier.rpc.audit import AuditLog, redact
from pier.rpc.auth import Authenticator, Credentials, Identity
from pier.rpc.errors import Forbidden, InvalidParams, NoVM, TooManyRequests, Unauthenticated
from pier.rpc.limits import FailedLogins, RateLimiter
from pier.rpc.registry import CallContext
from pier.tlsfiles import init_tls
from tests.unit.conftest import VM_ID, Stack


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def credentials(tmp_path: Path, clock: Clock):
    store = Credentials(str(tmp_path / "c.db"), clock=clock)
    yield store
    store.close()


def as_(identity: Identity | None, **extra: object) -> CallContext:
    return CallContext("test", "peer", identity=identity, **extra)


def test_a_token_proves_its_role_until_revoked(credentials: Credentials) -> None:
    made = credentials.create_token("viewer", "dashboard")
    identity = Authenticator(credentials).identify(authorization=f"Bearer {made['token']}")
    assert (identity.role, identity.how) == ("viewer", "token") and "dashboard" in identity.name
    assert made["token"] not in str(credentials.list_tokens())  # the secret is shown once only
    credentials.revoke_token(made["tokenID"])
    with pytest.raises(Unauthenticated, match="revoked"):
        credentials.current(identity)  # an identity held by an open connection stops working too
    with pytest.raises(Unauthenticated):
        Authenticator(credentials).identify(authorization=f"Bearer {made['token']}")


def test_wrong_expired_and_malformed_tokens_are_refused(credentials: Credentials, clock: Clock) -> None:
    made = credentials.create_token("admin", expires_in_days=1)
    authenticator = Authenticator(credentials)
    with pytest.raises(Unauthenticated, match="not valid"):
        authenticator.identify(authorization=f"Bearer {made['token']}x")
    clock.advance(86400 - 1)
    held = authenticator.identify(authorization=f"Bearer {made['token']}")  # valid until its last second
    assert held.role == "admin"
    clock.advance(2)
    with pytest.raises(Unauthenticated, match="expired"):
        authenticator.identify(authorization=f"Bearer {made['token']}")  # though proven a moment ago
    with pytest.raises(Unauthenticated, match="expired"):
        credentials.current(held)  # an open connection that proved it ends too
    with pytest.raises(Unauthenticated, match="Bearer"):
        authenticator.identify(authorization="Token abc")
    with pytest.raises(Unauthenticated, match="no credentials"):
        authenticator.identify()
    with pytest.raises(InvalidParams, match="role"):
        credentials.create_token("root")


def test_basic_credentials_carry_a_token_as_password(credentials: Credentials) -> None:
    import base64

    token = credentials.create_token("operator")["token"]
    basic = base64.b64encode(f"vdsm:{token}".encode()).decode()
    assert Authenticator(credentials).identify(authorization=f"Basic {basic}").role == "operator"


def test_trusted_certificates_by_fingerprint(credentials: Credentials, tmp_path: Path) -> None:
    import ssl

    files = init_tls(tmp_path / "tls")
    der = ssl.PEM_cert_to_DER_cert(files.client.read_text())
    with pytest.raises(Unauthenticated, match="not trusted"):
        Authenticator(credentials).identify(certificate=der)
    record = credentials.trust(files.client.read_text(), "operator")
    identity = Authenticator(credentials).identify(certificate=der)
    assert identity.role == "operator" and "pier-admin" in identity.name
    assert [t["fingerprint"] for t in credentials.list_trusted()] == [record["fingerprint"]]
    credentials.distrust(record["fingerprint"])
    with pytest.raises(Unauthenticated):
        credentials.current(identity)


def test_local_root_is_admin_and_other_users_are_refused(credentials: Credentials) -> None:
    authenticator = Authenticator(credentials, admin_group="no-such-group-here")
    assert authenticator.identify(peer_uid=0).role == "admin"
    with pytest.raises(Forbidden):
        authenticator.identify(peer_uid=4242, peer_gid=4242)


def test_roles_per_verb(stack: Stack) -> None:
    viewer = Identity("v", "viewer", "test")
    operator = Identity("o", "operator", "test")
    stack.registry.call("VM.create", {"vmID": VM_ID, "vmParams": {"vmName": "a", "memSize": 64}}, as_(operator))
    assert stack.registry.call("VM.getInfo", {"vmID": VM_ID}, as_(viewer))["vmId"] == VM_ID
    with pytest.raises(Forbidden) as refused:
        stack.registry.call("VM.pause", {"vmID": VM_ID}, as_(viewer))
    assert refused.value.data == {"needs": "operator", "role": "viewer"}
    with pytest.raises(Forbidden):
        stack.registry.call("Token.create", {"role": "admin"}, as_(operator))
    with pytest.raises(Unauthenticated):
        stack.registry.call("Host.ping2", {}, as_(None))
    why = Unauthenticated("token abc was revoked")
    with pytest.raises(Unauthenticated, match="revoked"):
        stack.registry.call("Host.ping2", {}, as_(None, auth_error=why))


def test_the_audit_log_holds_exactly_the_changing_calls(stack: Stack) -> None:
    operator = Identity("ops", "operator", "test")
    viewer = Identity("watcher", "viewer", "test")
    stack.registry.call("VM.create", {"vmID": VM_ID, "vmParams": {"vmName": "a", "memSize": 64}}, as_(operator))
    stack.registry.call("Host.getVMList", {}, as_(operator))
    stack.registry.call("VM.getInfo", {"vmID": VM_ID}, as_(viewer))
    with pytest.raises(Forbidden):
        stack.registry.call("VM.pause", {"vmID": VM_ID}, as_(viewer))
    with pytest.raises(NoVM):
        stack.registry.call("VM.pause", {"vmID": "6f1e3e4c-0000-4222-8333-444455556666"}, as_(operator))
    stack.registry.call("Token.create", {"role": "viewer", "name": "x"}, as_(Identity("root", "admin", "test")))
    entries = stack.audit.read()["entries"]
    assert [(e["verb"], e["who"], e["outcome"]) for e in entries] == [
        ("VM.create", "ops", "ok"), ("VM.pause", "watcher", "forbidden"), ("VM.pause", "ops", "noVM"),
        ("Token.create", "root", "ok")]
    assert entries[0]["target"] == VM_ID and entries[0]["via"] == "test" and entries[0]["peer"] == "peer"
    assert entries[0]["params"]["vmParams"] == {"vmName": "a", "memSize": 64}


def test_secrets_are_redacted() -> None:
    assert redact({"vmParams": {"password": "hunter2", "vmName": "a"}, "passcode": "x", "ticket": None},
                  ["ticket"]) == {"vmParams": {"password": "***", "vmName": "a"}, "passcode": "***", "ticket": None}


def test_audit_pages(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.db"))
    for i in range(5):
        log.record(who="w", role="admin", via="t", peer="p", verb=f"V.{i % 2}", target=None, params={},
                   outcome="ok")
    first = log.read(limit=2)
    assert [e["seq"] for e in first["entries"]] == [1, 2] and first["last"] == 2
    assert [e["seq"] for e in log.read(after=2, verb="V.0")["entries"]] == [3, 5]
    log.close()


def test_rate_limit_per_caller() -> None:
    clock = Clock(100.0)
    limiter = RateLimiter(rate=10, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a")
    assert refused.value.data["retryAfter"] == pytest.approx(0.1)
    limiter.take("b")  # another caller is not slowed down
    clock.advance(0.125)
    limiter.take("a")  # one call's allowance came back, and only one
    with pytest.raises(TooManyRequests):
        limiter.take("a")
    clock.advance(10)
    for _ in range(3):  # a long pause gives back the burst, no more
        limiter.take("a")
    with pytest.raises(TooManyRequests):
        limiter.take("a")


def test_rate_limit_through_the_registry(stack: Stack) -> None:
    stack.registry.limiter = RateLimiter(rate=1, burst=2)
    caller = Identity("busy", "viewer", "test")
    stack.registry.call("Host.ping2", {}, as_(caller))
    stack.registry.call("Host.ping2", {}, as_(caller))
    with pytest.raises(TooManyRequests):
        stack.registry.call("Host.ping2", {}, as_(caller))


def test_root_on_the_local_socket_is_never_rate_limited(stack: Stack, credentials: Credentials) -> None:
    stack.registry.limiter = RateLimiter(rate=1, burst=2)
    root = Authenticator(credentials).identify(peer_uid=0)
    for _ in range(50):
        assert stack.registry.call("Host.ping2", {}, as_(root)) is True


def test_the_rate_limit_is_opt_in() -> None:
    from pier.config import load_settings

    assert load_settings([]).rate_limit == 0


def test_failed_authentications_are_throttled_per_source(credentials: Credentials, clock: Clock) -> None:
    good = credentials.create_token("viewer")["token"]
    authenticator = Authenticator(credentials, failures=FailedLogins(limit=3, window=60, clock=clock))
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            authenticator.identify(authorization="Bearer pier_nothere_guess", source="10.0.0.9")
    with pytest.raises(TooManyRequests, match="3 failed authentications from 10.0.0.9") as refused:
        authenticator.identify(authorization=f"Bearer {good}", source="10.0.0.9")  # not even looked at
    assert refused.value.data["retryAfter"] == pytest.approx(60)
    assert authenticator.identify(authorization=f"Bearer {good}", source="10.0.0.7").role == "viewer"
    # Proven once, the good token passes from the throttled address too: a client there goes on.
    assert authenticator.identify(authorization=f"Bearer {good}", source="10.0.0.9").role == "viewer"
    with pytest.raises(TooManyRequests):
        authenticator.identify(authorization="Bearer pier_nothere_other", source="10.0.0.9")
    assert authenticator.identify(peer_uid=0, source="local").role == "admin"  # the local socket needs none
    clock.advance(59.5)
    with pytest.raises(TooManyRequests):  # until the window has passed
        authenticator.identify(authorization="Bearer pier_nothere_other", source="10.0.0.9")
    clock.advance(0.5)
    with pytest.raises(Unauthenticated):  # looked at again once it has
        authenticator.identify(authorization="Bearer pier_nothere_other", source="10.0.0.9")
