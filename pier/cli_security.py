"""`pier`'s security side: the credentials it presents, and the commands that manage pierd's.

- Credentials: `--token` ($PIER_TOKEN) is sent as a bearer token on every request; for https,
  `--cert/--key` ($PIER_CERT, $PIER_KEY) present a client certificate and `--ca` ($PIER_CA) checks
  pierd's certificate (by default against the system's CAs plus the CA pierd made in its state
  directory, when this user can read it).
- `pier token create|list|revoke`, `pier trust add|list|remove`, `pier audit`: admin verbs, named
  in `pier.cli.CONVENIENCE_VERBS`.
- `pier init-tls`: makes a CA and certificates locally, without pierd.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

from pier import cli
from pier import cli_format as fmt
from pier.config import DEFAULT_HTTP, default_state_dir, default_unix_socket

AUDIT_FOLLOW_INTERVAL = 2.0
AUDIT_PAGE = 1000  # the most Host.getAuditLog answers at once
ROOT_SOCKET = "/run/pier/pier.sock"  # pierd's local socket when it runs as root
ROOT_STATE_DIR = "/var/lib/pier"  # where pierd keeps its state (and tls/ca.pem) when it runs as root
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")
_FINGERPRINT = re.compile(r"[0-9A-F]{64}")
URL_HELP = (f"$PIER_URL, else pierd's local socket when there is one\n({ROOT_SOCKET} or STATE_DIR/pier.sock), "
            f"else {cli.DEFAULT_URL}")  # the newline is for `pier --help`; argparse folds it elsewhere


# -- where and with what ----------------------------------------------------------------------


def default_url() -> str:
    """$PIER_URL; else pierd's local socket when there is one we may use; else DEFAULT_URL."""
    if os.environ.get("PIER_URL"):
        return os.environ["PIER_URL"]
    for path in dict.fromkeys([ROOT_SOCKET, default_unix_socket(default_state_dir())]):
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            continue
        if is_socket and os.access(path, os.R_OK | os.W_OK):
            return f"http+unix://{path}"
    return cli.DEFAULT_URL


def add_credential_options(parser: argparse.ArgumentParser, default: Any, hidden: bool = False) -> None:
    texts = {"--token": "a bearer token, sent with every request (default $PIER_TOKEN, which is better: other "
                        "users can read a command line)",
             "--cert": "for https: a client certificate (PEM) to present (default $PIER_CERT)",
             "--key": "the client certificate's key, unless it is in --cert's file (default $PIER_KEY)",
             "--ca": "for https: check pierd's certificate with this CA (default $PIER_CA, else the system's "
                     "CAs and pierd's own tls/ca.pem)"}
    for flag, text in texts.items():
        parser.add_argument(flag, metavar="TOKEN" if flag == "--token" else "FILE", default=default,
                            help=argparse.SUPPRESS if hidden else text)


def option(args: argparse.Namespace, name: str) -> str | None:
    return getattr(args, name, None) or os.environ.get(f"PIER_{name.upper()}") or None


def token_of(args: argparse.Namespace) -> str | None:
    """The bearer token to send; ValueError when it cannot go in a header."""
    token = option(args, "token")
    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token.strip()):
        raise ValueError("--token/$PIER_TOKEN: a token is one word of printable characters")
    return token.strip() if token else None


def local_cas() -> list[str]:
    """The CAs pierd makes at its first start (its state directory's tls/ca.pem) that we can read."""
    paths = dict.fromkeys([str(Path(default_state_dir()) / "tls" / "ca.pem"), f"{ROOT_STATE_DIR}/tls/ca.pem"])
    return [path for path in paths if os.access(path, os.R_OK)]


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context for an https URL (None otherwise); ValueError naming a file that cannot be used."""
    cert, key, ca = option(args, "cert"), option(args, "key"), option(args, "ca")
    if key and not cert:
        raise ValueError("--key goes with --cert")
    if not args.url.startswith("https://"):
        return None
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use --ca {ca}: {exc}") from None
    for path in [] if ca else local_cas():
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError):
            pass  # not a CA after all; the system's CAs may still do
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use --cert {cert}{f' --key {key}' if key else ''}: {exc}") from None
    return context


def tls_failure(exc: ssl.SSLError, url: str) -> Exception:
    """What to tell of a TLS error: pierd's certificate not trusted, no TLS there, or ours refused."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return cli.Unreachable(f"cannot trust pierd's certificate at {url}: {exc.verify_message} — pass --ca FILE "
                               "(pierd's own CA is ca.pem in its state directory's tls/)")
    reason = "pierd closed the connection" if isinstance(exc, ssl.SSLEOFError) else exc.reason or str(exc)
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
        return cli.Unreachable(f"pierd at {url} does not speak TLS: use http://")
    if "ALERT" in reason or isinstance(exc, ssl.SSLEOFError):
        # pierd turned our certificate down; with TLS 1.3 it says so after our side of the handshake ended,
        # by an alert or by closing the connection
        return cli.Refused(f"the TLS handshake failed ({reason})", hint="pierd takes client certificates signed "
                           "by its CA or trusted with 'pier trust add CERT.pem --role ROLE'")
    return cli.Unreachable(f"cannot reach pierd at {url}: TLS: {reason}")


# -- tokens ------------------------------------------------------------------------------------


def cmd_token(client: cli.PierClient, args: argparse.Namespace) -> int:
    verbs = cli.CONVENIENCE_VERBS
    if args.token_command == "create":
        params: dict[str, Any] = {"role": args.role, "name": args.name}
        if args.expires is not None:
            params["expiresInDays"] = args.expires
        made = client.call(verbs["token.create"], params)
        cli._out(fmt.compact_json(made) if args.json else fmt.new_token(made, client.url))
    elif args.token_command == "list":
        tokens = client.call(verbs["token.list"], {})
        cli._out(fmt.compact_json(tokens) if args.json else fmt.tokens_table(tokens, time.time()))
    else:
        # The ID alone: a whole token pasted here must not end up in the audit log's params.
        token_id = args.id.removeprefix("pier_").split("_")[0]
        result = client.call(verbs["token.revoke"], {"tokenID": token_id})
        cli._out(fmt.compact_json(result) if args.json else f"token {token_id} revoked")
    return cli.EXIT_OK


# -- trusted certificates ----------------------------------------------------------------------


def cmd_trust(client: cli.PierClient, args: argparse.Namespace) -> int:
    verbs = cli.CONVENIENCE_VERBS
    if args.trust_command == "add":
        try:
            text = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            cli._err(f"pier: cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}")
            return cli.EXIT_USAGE
        found = _PEM_CERTIFICATE.search(text)  # only the certificate: a key in the same file stays here
        if found is None:
            cli._err(f"pier: {args.file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
            return cli.EXIT_USAGE
        record = client.call(verbs["trust.add"], {"certificate": found.group(0) + "\n", "role": args.role,
                                                  "name": args.name})
        cli._out(fmt.compact_json(record) if args.json else fmt.trusted(record))
    elif args.trust_command == "list":
        records = client.call(verbs["trust.list"], {})
        cli._out(fmt.compact_json(records) if args.json else fmt.trusted_table(records))
    else:
        fingerprint = _resolve_fingerprint(client, args.fingerprint)
        if fingerprint is None:
            return cli.EXIT_FAILED
        result = client.call(verbs["trust.remove"], {"fingerprint": fingerprint})
        cli._out(fmt.compact_json(result) if args.json else f"certificate {fingerprint} is no longer trusted")
    return cli.EXIT_OK


def _resolve_fingerprint(client: cli.PierClient, text: str) -> str | None:
    """A whole fingerprint (colons optional), or the one trusted fingerprint starting with `text`."""
    wanted = text.replace(":", "").upper()
    if _FINGERPRINT.fullmatch(wanted):
        return ":".join(wanted[i:i + 2] for i in range(0, 64, 2))
    matches = [record["fingerprint"] for record in client.call(cli.CONVENIENCE_VERBS["trust.list"], {})
               if record["fingerprint"].replace(":", "").startswith(wanted)] if wanted else []
    if len(matches) != 1:
        cli._err(f"pier: {'no' if not matches else 'more than one'} trusted certificate starts with {text} "
                 "(`pier trust list` shows them)")
        return None
    return matches[0]


# -- the audit log -----------------------------------------------------------------------------


def _last(text: str) -> int:
    number = _positive(text)
    if number > 1000:
        raise argparse.ArgumentTypeError("at most 1000")
    return number


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The audit filters the command line asked for."""
    return {**({"verb": args.verb} if args.verb else {}), **({"refused": True} if args.refused else {})}


def cmd_audit(client: cli.PierClient, args: argparse.Namespace) -> int:
    """Entries after --after (all of them, the first --limit or the newest --last) as a table; with
    --follow, line by line, then new ones every 2 s."""
    after, left, header, kept = args.after or 0, None if args.follow else args.limit, True, []
    if args.last:
        params: dict[str, Any] = {"after": after, "limit": args.last, "newest": True, **_filters(args)}
        page = client.call(cli.CONVENIENCE_VERBS["audit"], params)
        kept, after = page.get("entries", []), page.get("last", after)
        if not args.follow:
            cli._out("\n".join(fmt.compact_json(entry) for entry in kept) if args.json else fmt.audit_table(kept))
            return cli.EXIT_OK
        if not args.json:
            cli._out(fmt.audit_header())
            header = False
        for entry in kept:
            cli._out(fmt.compact_json(entry) if args.json else fmt.audit_line(entry))
        kept = []
    while True:
        params = {"after": after, "limit": min(AUDIT_PAGE, left or AUDIT_PAGE), **_filters(args)}
        page = client.call(cli.CONVENIENCE_VERBS["audit"], params)
        entries = page.get("entries", [])
        after = page.get("last", after)
        if args.json or args.follow:
            if header and entries and not args.json:
                cli._out(fmt.audit_header())
                header = False
            for entry in entries:
                cli._out(fmt.compact_json(entry) if args.json else fmt.audit_line(entry))
        else:
            kept += entries
        if left is not None:
            left -= len(entries)
        if entries and (left is None or left > 0):
            continue  # there may be more right away
        if not args.follow:
            if not args.json:
                cli._out(fmt.audit_table(kept))
            return cli.EXIT_OK
        time.sleep(AUDIT_FOLLOW_INTERVAL)


# -- init-tls ----------------------------------------------------------------------------------


def cmd_init_tls(client: None, args: argparse.Namespace) -> int:
    from pier.tlsfiles import init_tls

    directory = Path(args.dir) if args.dir else Path(default_state_dir()) / "tls"
    hostname = args.hostname or socket.getfqdn()
    try:
        files = init_tls(directory, hostname, force=args.force)
    except FileExistsError as exc:
        cli._err(f"pier: {exc}")
        return cli.EXIT_FAILED
    except OSError as exc:
        cli._err(f"pier: cannot write the TLS files in {directory}: {exc.strerror or exc}")
        return cli.EXIT_FAILED
    paths = {"directory": files.directory, "ca": files.ca, "caKey": files.directory / "ca-key.pem",
             "server": files.server, "serverKey": files.server_key, "client": files.client,
             "clientKey": files.client_key}
    if args.json:
        cli._out(fmt.compact_json({"hostname": hostname, **{k: str(v.absolute()) for k, v in paths.items()}}))
    else:
        cli._out(fmt.init_tls_text({k: str(v.absolute()) for k, v in paths.items()}, hostname,
                                   f"https://{DEFAULT_HTTP}"))
    return cli.EXIT_OK


# -- the command line --------------------------------------------------------------------------


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`token`, `trust`, `audit` and `init-tls` on the `pier` parser's subcommands."""
    token = sub.add_parser("token", parents=[common], help="make, list and revoke bearer tokens (admin)")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_sub.add_parser("create", parents=[common], help="make a token; its secret is shown only once")
    create.add_argument("--role", required=True, help="viewer, operator or admin")
    create.add_argument("--name", default="", help="who or what it is for")
    create.add_argument("--expires", type=float, metavar="DAYS", help="days until it stops working (default never)")
    token_sub.add_parser("list", parents=[common], help="every token and its state (never the secrets)")
    token_sub.add_parser("revoke", parents=[common], help="stop a token from working, at once").add_argument(
        "id", help="the token's ID (or the whole token)")
    token.set_defaults(run=cmd_token)

    trust = sub.add_parser("trust", parents=[common], help="trust client certificates for mutual TLS (admin)")
    trust_sub = trust.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    add = trust_sub.add_parser("add", parents=[common], help="trust a client certificate with a role")
    add.add_argument("file", metavar="CERT.pem", help="the certificate, PEM (only the certificate is sent)")
    add.add_argument("--role", required=True, help="viewer, operator or admin")
    add.add_argument("--name", default="", help="a name for it (default: its subject)")
    trust_sub.add_parser("list", parents=[common], help="the trusted certificates and their roles")
    trust_sub.add_parser("remove", parents=[common], help="stop trusting a certificate, at once").add_argument(
        "fingerprint", help="its SHA-256 fingerprint, or the start of one")
    trust.set_defaults(run=cmd_trust)

    audit = sub.add_parser("audit", parents=[common], help="who changed what, and how it ended (admin)")
    audit.add_argument("--after", type=int, metavar="SEQ", help="only entries after this sequence number")
    how_many = audit.add_mutually_exclusive_group()
    how_many.add_argument("--limit", type=_positive, metavar="N",
                          help="at most N entries (default all; not with --follow)")
    how_many.add_argument("--last", type=_last, metavar="N",
                          help="only the newest N entries (at most 1000; with --follow, then the new ones)")
    audit.add_argument("--verb", metavar="VERB", help="only calls of this verb, e.g. VM.destroy")
    audit.add_argument("--refused", action="store_true",
                       help="only refused calls (no or bad credentials, wrong role, limited, invalid params), "
                       "counted per source and minute")
    audit.add_argument("--follow", "-f", action="store_true",
                       help=f"then look for new entries every {AUDIT_FOLLOW_INTERVAL:g} s until Ctrl-C")
    audit.set_defaults(run=cmd_audit)

    json_only = argparse.ArgumentParser(add_help=False)
    json_only.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="machine-readable output (compact JSON)")
    init = sub.add_parser("init-tls", parents=[json_only], help="make a CA and certificates for TLS, here "
                          "(no pierd needed)")
    init.add_argument("--dir", metavar="DIR", help=f"where (default {default_state_dir()}/tls, pierd's default)")
    init.add_argument("--hostname", metavar="H", help="the server certificate's name (default this host's FQDN)")
    init.add_argument("--force", action="store_true", help="replace certificates already there")
    init.set_defaults(run=cmd_init_tls, local=True)
