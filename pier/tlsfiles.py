"""`pier init-tls`: a CA, a server certificate and an admin client certificate for a first run.

Written with `cryptography` into a directory (by default `<state dir>/tls`): `ca.pem`,
`ca-key.pem`, `server.pem`, `server-key.pem`, `client.pem`, `client-key.pem`. The directory is
0700 and the keys 0600, made so (a key is written to a new 0600 file that then replaces the old
one, so a renewal also tightens a key an older version left looser). pierd makes them on its first start when TLS is needed and none are
configured; the client certificate is then trusted as an admin.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pier.rpc.store import PRIVATE_FILE, private_directory


@dataclass(frozen=True)
class TlsFiles:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    def exist(self) -> bool:
        return self.server.exists() and self.server_key.exists()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pier"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    new = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(new, path)
    except BaseException:
        new.unlink(missing_ok=True)
        raise


def _write_cert(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _issue(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, days: int, *, ca: bool = False,
           sans: list[x509.GeneralName] | None = None, usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _server_names(hostname: str, addresses: tuple[str, ...] = ()) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted({hostname, socket.gethostname(), "localhost"})]
    return names + [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(("127.0.0.1", "::1", *addresses))]


def init_tls(directory: Path, hostname: str | None = None, *, days: int = 825, force: bool = False) -> TlsFiles:
    """Make a CA, a server certificate for `hostname` (and localhost) and an admin client certificate."""
    files = TlsFiles(Path(directory))
    if files.exist() and not force:
        raise FileExistsError(f"{files.server} already exists (use --force to replace it)")
    private_directory(files.directory, "TLS directory")
    hostname = hostname or socket.getfqdn()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"Pier CA {hostname} {secrets.token_hex(4)}")  # two CAs of one host must not share a name
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, 3650, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(_name(hostname), server_key, ca_name, ca_key, days, sans=_server_names(hostname),
                         usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(_name("pier-admin"), client_key, ca_name, ca_key, days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(files.directory / "ca-key.pem", ca_key)
    _write_cert(files.ca, ca_cert)
    _write_key(files.server_key, server_key)
    _write_cert(files.server, server_cert)
    _write_key(files.client_key, client_key)
    _write_cert(files.client, client_cert)
    return files


def renew_server(directory: Path, hostname: str | None = None, *, days: int = 825) -> TlsFiles:
    """A new server certificate and key from the CA in `directory`; send pierd SIGHUP to use it."""
    files = TlsFiles(Path(directory))
    issue_server(files.directory, files.server, files.server_key, hostname, days=days)
    return files


def issue_server(ca_directory: Path, cert: Path, key: Path, hostname: str | None = None, *,
                 days: int = 825, addresses: tuple[str, ...] = ()) -> None:
    """A server certificate for `hostname` (and localhost) signed by the CA in `ca_directory`,
    written to `cert` with its key at `key` (0600): for pierd itself, or another server of this
    host that clients trust by the same CA (ovirt-imageio); `addresses` are IP addresses it
    answers on besides loopback (another host's, which a peer reaches it by)."""
    files = TlsFiles(Path(ca_directory))
    ca_key_file = files.directory / "ca-key.pem"
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_file} holds a {type(ca_key).__name__}, not the elliptic-curve key "
                         "`pier init-tls` makes")
    ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    hostname = hostname or socket.getfqdn()
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(_name(hostname), server_key, ca_cert.subject, ca_key, days,
                         sans=_server_names(hostname, addresses), usage=ExtendedKeyUsageOID.SERVER_AUTH)
    _write_key(Path(key), server_key)
    _write_cert(Path(cert), server_cert)


def second_server(directory: Path, pier_tls: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, CA) for another server of this host (ovirt-imageio) in `directory`:
    issued by pierd's own CA in `pier_tls` when there is one (again when missing, issued by another
    CA, or within 30 days of expiry); else, for a pierd on --insecure-loopback that never made a
    CA, a CA and certificate of the server's own."""
    own = TlsFiles(Path(directory))
    pier_ca = TlsFiles(Path(pier_tls))
    if (pier_ca.directory / "ca-key.pem").exists():
        if not _issued_by(own.server, pier_ca.ca):
            private_directory(own.directory, "TLS directory")
            issue_server(pier_ca.directory, own.server, own.server_key)
        return own.server, own.server_key, pier_ca.ca
    if not own.exist():
        init_tls(own.directory)
    return own.server, own.server_key, own.ca


def _issued_by(cert: Path, ca: Path) -> bool:
    """True when `cert` exists, was issued by the CA in `ca` and is valid for 30 more days."""
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
        authority = x509.load_pem_x509_certificate(ca.read_bytes())
    except (OSError, ValueError):
        return False
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return certificate.issuer == authority.subject and left > datetime.timedelta(days=30)
