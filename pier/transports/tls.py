"""TLS for every TCP listener: one server context, reloaded in place.

All listeners share one `ssl.SSLContext`. Reloading (on SIGHUP) loads the new certificate and key
into that same context, so new handshakes get them while established connections keep theirs:
nobody is dropped. Clients may present a certificate (mutual TLS, checked against the CA and then
against the trust store by fingerprint) or none (they then need a bearer token).
"""

from __future__ import annotations

import datetime
import logging
import ssl
from dataclasses import dataclass

log = logging.getLogger("pier.transports.tls")

WARN_DAYS = 30


@dataclass(frozen=True)
class CertificateState:
    """What the server certificate says about its own end."""

    not_after: datetime.datetime
    subject: str

    @property
    def days_left(self) -> float:
        return (self.not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400

    def describe(self) -> dict[str, object]:
        days = self.days_left
        out: dict[str, object] = {"notAfter": self.not_after.isoformat(), "expiresInDays": round(days, 1),
                                  "subject": self.subject}
        if days < WARN_DAYS:
            out["warning"] = (f"the server certificate {'expired' if days < 0 else 'expires'} on "
                              f"{self.not_after:%Y-%m-%d}; put a new one in place and send pierd SIGHUP")
        return out


class ServerTls:
    """The listeners' TLS context, built from PEM files."""

    def __init__(self, cert: str, key: str, ca: str = "", trusted_pems: list[str] | None = None) -> None:
        self.cert, self.key, self.ca = cert, key, ca
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_OPTIONAL  # a client without a certificate may use a token
        self.context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a trusted leaf is enough, whoever signed it
        self._load(trusted_pems or [])
        self.state = certificate_state(cert)

    def _load(self, trusted_pems: list[str]) -> None:
        self.context.load_cert_chain(self.cert, self.key)
        if self.ca:
            self.context.load_verify_locations(cafile=self.ca)
        for pem in trusted_pems:
            self.trust(pem)

    def trust(self, pem: str) -> None:
        """Accept handshakes from this (possibly self-signed) client certificate too."""
        try:
            self.context.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            log.warning("could not add a trusted certificate to the TLS context: %s", exc)

    def reload(self) -> CertificateState:
        """Load the certificate files again into the same context (new handshakes only)."""
        self.context.load_cert_chain(self.cert, self.key)
        if self.ca:
            self.context.load_verify_locations(cafile=self.ca)
        self.state = certificate_state(self.cert)
        return self.state


def certificate_state(path: str) -> CertificateState:
    """The expiry and subject of the PEM certificate at `path`.

    Read with the ssl module's own decoder (the one its tests use): importing `cryptography` for
    this would cost pierd about 13 MB of memory for as long as it runs.
    """
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:  # pragma: no cover - another Python: fall back to cryptography
        from cryptography import x509

        with open(path, "rb") as stream:
            certificate = x509.load_pem_x509_certificate(stream.read())
        return CertificateState(certificate.not_valid_after_utc, certificate.subject.rfc4514_string())
    decoded = decode(path)
    not_after = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(decoded["notAfter"]), datetime.UTC)
    subject = ",".join(f"{key}={value}" for rdn in decoded.get("subject", ()) for key, value in rdn)
    return CertificateState(not_after, subject)
