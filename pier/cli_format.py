"""Text in and out for `pier`: params from the command line; tables, event lines, progress, verb help.

Pure functions between text and data (no HTTP), so the commands in `pier.cli` stay short and these
stay easy to test. Machine output (`--json`) does not come through here beyond `compact_json`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


def _declared_type(schema: Any, verb: Any, path: list[str]) -> Any:
    """The JSON Schema `type` declared for params.<path>, following $refs; None when unknown."""
    node: Any = {"properties": verb.params}
    for key in path:
        node = schema.deref(node)
        node = (node.get("properties") or {}).get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    node = schema.deref(node)
    return node.get("type") if isinstance(node, dict) else None


def parse_params(words: list[str], schema: Any = None, verb: Any = None, stdin: TextIO | None = None) -> Any:
    """Params from `pier call` words: one JSON object (or `-` for stdin), then `key=value` pairs.

    A value is parsed as JSON when it parses, unless the schema declares a string there; a dotted
    key (`vmParams.vmName=a`) sets a field inside an object param. Raises ValueError on bad input.
    """
    params: Any = {}
    for index, word in enumerate(words):
        if index == 0 and (word == "-" or word.lstrip().startswith(("{", "["))):
            text = (stdin or sys.stdin).read() if word == "-" else word
            try:
                params = json.loads(text) if text.strip() else {}
            except ValueError as exc:
                raise ValueError(f"params are not valid JSON: {exc}") from None
            if not isinstance(params, (dict, list)):
                raise ValueError("params must be a JSON object (or an array, by position)")
            continue
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value or a JSON object, got {word!r}")
        if not isinstance(params, dict):
            raise ValueError("key=value pairs cannot be added to params given as a JSON array")
        path = key.split(".")
        declared = _declared_type(schema, verb, path) if verb is not None else None
        value: Any = raw
        if declared != "string":
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        target = params
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"{key}: {part} is not an object")
        target[path[-1]] = value
    return params


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns aligned with two spaces between them; the last column is not padded."""
    cells = [[("" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    lines = [headers] + cells
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def key_values(pairs: list[tuple[str, str]]) -> str:
    """`key   value` lines with the values aligned."""
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def clock(epoch: float | None) -> str:
    """Local time with milliseconds, e.g. `2024-05-01 12:00:00.123`."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}"


def duration(seconds: float) -> str:
    """`3d 4h 5m`, `5m 12s` or `12s`."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def event_line(event: dict[str, Any]) -> str:
    """`seq  time  name  {compact params}`."""
    return f"{event.get('seq', '?'):>6}  {clock(event.get('time'))}  {event.get('name', '?')}  " \
           f"{compact_json(event.get('params', {}))}"


def progress_line(task: dict[str, Any]) -> str:
    """`42% message`, or the task's state when it has no message."""
    return f"{task.get('progress', 0):>3}% {task.get('message') or task.get('state', '')}".rstrip()


def error_line(code: Any, name: str | None, message: str) -> str:
    return f"error {code} {name or '?'}: {message}"


def vms_table(vms: list[dict[str, Any]]) -> str:
    if not vms:
        return "no VMs on this host"
    rows = sorted(([vm.get("vmId", ""), vm.get("vmName", ""), vm.get("status", "")] for vm in vms),
                  key=lambda row: (str(row[1]), str(row[0])))
    return table(["VM ID", "NAME", "STATUS"], rows)


def networks_table(caps: dict[str, Any]) -> str:
    """The networks Pier made, then every other device, from Host.getNetworkCapabilities."""
    def addresses(entry: dict[str, Any]) -> str:
        found = list(entry.get("ipv4addrs") or []) + list(entry.get("ipv6addrs") or [])
        return " ".join(found) + (" (dhcp)" if entry.get("dhcpv4") else "") if found else "-"

    networks = caps.get("networks") or {}
    parts = []
    if networks:
        parts.append(table(["NETWORK", "BRIDGED", "DEVICE", "ON", "MTU", "ADDRESSES", "GATEWAY"],
                           [[name, "yes" if net.get("bridged") else "no", net.get("iface", ""),
                             net.get("southbound") or "-", net.get("mtu", ""), addresses(net),
                             net.get("gateway") or "-"] for name, net in sorted(networks.items())]))
    else:
        parts.append("no networks made by Pier on this host")
    rows = []
    for kind, key in (("nic", "nics"), ("bond", "bondings"), ("vlan", "vlans"), ("bridge", "bridges")):
        for name, dev in sorted((caps.get(key) or {}).items()):
            members = dev.get("ports") or dev.get("slaves") or ([dev["iface"]] if dev.get("iface") else [])
            speed = f"{dev['speed']} Mb/s" if dev.get("speed") else "-"
            rows.append([name, kind, dev.get("mtu", ""), speed, " ".join(members) or "-", addresses(dev)])
    if rows:
        parts.append(table(["DEVICE", "KIND", "MTU", "SPEED", "MEMBERS", "ADDRESSES"], rows))
    return "\n\n".join(parts)


def _size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def storage_table(domains: list[dict[str, Any]]) -> str:
    """The storage domains from Host.listStorageDomains: an invalid one shows why on its own line."""
    if not domains:
        return "no storage domains on this host's connections"
    rows, problems = [], []
    for d in sorted(domains, key=lambda d: (str(d.get("name", "")), str(d["uuid"]))):
        state = "valid" if d.get("valid") else "INVALID"
        free = f"{_size(d.get('diskfree'))} of {_size(d.get('disktotal'))}" if d.get("valid") else "-"
        rows.append([d["uuid"], d.get("name", "-") or "-", d.get("type", "-"), d.get("class", "-"),
                     d.get("role", "-"), ",".join(d.get("pool") or []) or "-", free, state])
        error = d.get("error") or {}
        if not d.get("valid") and error:
            problems.append(f"{d['uuid']}: {error_line(error.get('code'), error.get('name'), error.get('message', ''))}")
    out = table(["DOMAIN", "NAME", "TYPE", "CLASS", "ROLE", "POOL", "FREE", "STATE"], rows)
    return out + ("\n\n" + "\n".join(problems) if problems else "")


def volumes_table(volumes: list[dict[str, Any]]) -> str:
    """Volumes from Volume.getInfo, by image, parents before their layers."""
    if not volumes:
        return "no volumes"
    blank = "00000000-0000-0000-0000-000000000000"
    rows = [[v["uuid"], v.get("image", "-"), v.get("format", "-"), v.get("type", "-"), v.get("voltype", "-"),
             v.get("legality", "-"), _size(v.get("capacity")), _size(v.get("truesize")),
             "-" if v.get("parent") in (None, "", blank) else v["parent"], v.get("description", "") or "-"]
            for v in sorted(volumes, key=lambda v: (str(v.get("image")), v.get("parent") not in (None, "", blank),
                                                    str(v.get("ctime")), str(v["uuid"])))]
    return table(["VOLUME", "IMAGE", "FORMAT", "TYPE", "ROLE", "LEGALITY", "SIZE", "ON DISK", "PARENT",
                  "DESCRIPTION"], rows)


def tasks_table(tasks: dict[str, dict[str, Any]]) -> str:
    if not tasks:
        return "no tasks"
    ordered = sorted(tasks.values(), key=lambda task: (task.get("created") or 0, task.get("taskID", "")))
    return table(["TASK ID", "VERB", "TARGET", "STATE", "PROGRESS", "CREATED", "MESSAGE"],
                 [[task.get("taskID"), task.get("verb"), task.get("target") or "", task.get("state"),
                   f"{task.get('progress', 0)}%", clock(task.get("created")), task.get("message") or ""]
                  for task in ordered])


def host_summary(caps: dict[str, Any], stats: dict[str, Any]) -> str:
    """A few lines on the host from Host.getCapabilities and Host.getStats; absent facts are skipped."""
    pairs: list[tuple[str, str]] = []

    def add(key: str, value: str | None) -> None:
        if value:
            pairs.append((key, value))

    add("host id", caps.get("uuid"))
    topology = ", ".join(f"{caps[field]} {label}" for field, label in
                         (("cpuSockets", "sockets"), ("cpuCores", "cores"), ("cpuThreads", "threads"))
                         if caps.get(field) not in (None, ""))
    if caps.get("onlineCpus"):
        topology += f" (online: {caps['onlineCpus']})"
    add("cpu", ": ".join(part for part in (caps.get("cpuModel"), topology) if part))
    memory = [f"{caps['memSize']} MiB"] if caps.get("memSize") else []
    if stats.get("memFree") is not None:
        memory.append(f"{stats['memFree']} MiB free")
    if stats.get("memUsed") is not None:
        memory.append(f"{stats['memUsed']}% used")
    add("memory", ", ".join(memory))
    add("kvm", {"true": "enabled", "false": "disabled"}.get(str(caps.get("kvmEnabled")).lower()))
    system = caps.get("operatingSystem") or {}
    add("os", " ".join(str(system[key]) for key in ("name", "version", "release") if system.get(key)))
    packages = caps.get("packages2") or {}
    add("software", ", ".join(
        f"{name} {info.get('version', '')}{'-' + info['release'] if info.get('release') else ''}".strip()
        for name, info in sorted(packages.items()) if isinstance(info, dict)))
    usage = [f"{stats[key]}% {label}" for key, label in (("cpuUser", "user"), ("cpuSys", "system"),
                                                          ("cpuIdle", "idle")) if stats.get(key) is not None]
    if stats.get("cpuLoad") is not None:
        usage.append(f"load {stats['cpuLoad']}")
    add("cpu use", ", ".join(usage))
    if stats.get("vmCount") is not None:
        details = [f"{stats[key]} {label}" for key, label in (("vmActive", "active"), ("vmMigrating", "migrating"))
                   if stats.get(key) is not None]
        add("vms", f"{stats['vmCount']}" + (f" ({', '.join(details)})" if details else ""))
    if str(stats.get("elapsedTime", "")).isdigit():
        add("agent up", duration(int(stats["elapsedTime"])))
    return key_values(pairs) if pairs else "(the host reported no facts)"


def verbs_table(verbs: list[Any]) -> str:
    return table(["VERB", "ROLE", "TASK", "SUMMARY"],
                 [[verb.name, verb.role, "task" if verb.task else "", verb.summary] for verb in verbs])


def verb_help(verb: Any) -> str:
    """What `pier help VERB` prints: summary, facts, params, REST routes; all from the schema."""
    from pier.docs import error_text, requirement_text, route_notes, route_text, type_text

    lines = [f"{verb.name} - {verb.summary}", ""]
    facts = [("role", verb.role + (" (read-only)" if verb.readonly else ""))]
    if verb.task:
        facts.append(("task", "yes: answers a Task at once; add --wait to wait for it"))
    facts.append(("returns", type_text(verb.returns)))
    if verb.errors:
        facts.append(("errors", ", ".join(f"{code} {name}" for code, name, _, _ in map(error_text, verb.errors))))
    for route in verb.rest:
        notes = route_notes(route)
        facts.append(("REST", route_text(route) + (f" ({notes})" if notes else "")))
    if verb.legacy:
        facts.append(("legacy XML-RPC", ", ".join(legacy.name for legacy in verb.legacy)))
    lines += [key_values(facts), ""]
    if verb.params:
        rows = [[name, type_text(spec), requirement_text(verb, name), spec.get("description", "")]
                for name, spec in verb.params.items()]
        lines += ["params:", _indent(table(["NAME", "TYPE", "REQUIRED/DEFAULT", "DESCRIPTION"], rows)), ""]
        example = " ".join(f"{name}=..." for name in verb.required) or f"{next(iter(verb.params))}=..."
        lines.append(f"usage: pier call {verb.name} {example}   (or a JSON object of params, or - for stdin)")
    else:
        lines += ["params: none", "", f"usage: pier call {verb.name}"]
    return "\n".join(lines)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# -- security: refusals, tokens, trusted certificates, the audit log, TLS files ---------------------


def when(epoch: float | None) -> str:
    """Local time to the minute, e.g. `2024-05-01 12:00`; `-` for none."""
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def refusal_line(message: str, forbidden: bool, needs: str | None, sent_credentials: bool, hint: str = "") -> str:
    """One line on why pierd refused the caller and what to do about it (`hint`, when the caller knows)."""
    make = f"an admin makes one with 'pier token create --role {needs or 'viewer'}'"
    if "pier token create" in message:  # pierd said so already
        make = "see above"
    if not hint and forbidden and needs:
        hint = f"this needs the {needs} role: pass a --token or --cert that has it ({make}) " \
               "or use the local socket as root"
    elif not hint and forbidden:
        hint = f"pass --token ({make}) or use the local socket as root or as a member of pier-admin"
    elif not hint and sent_credentials:
        hint = f"pass a valid --token ({make}; 'pier token list' shows which are active) " \
               "or use the local socket as root"
    elif not hint:
        hint = f"pass --token ({make}) or use the local socket as root"
    return f"pierd refused the call: {message} — {hint}"


def new_token(made: dict[str, Any], url: str) -> str:
    """What `pier token create` prints: the secret once, prominently, and how to use it."""
    name = f" \"{made['name']}\"" if made.get("name") else ""
    expires = f"expires {when(made['expires'])}" if made.get("expires") else "never expires"
    token = made["token"]
    return "\n".join([
        f"token {made['tokenID']}{name}, role {made['role']}, {expires}", "", f"    {token}", "",
        "This is the only time it is shown (pierd keeps only a hash): store it now. Use it with:",
        f"    export PIER_TOKEN={token}",
        f"    pier --url {url} vms" if not url.startswith("http+unix") else "    pier --url https://HOST:8042 vms",
        f"or send 'Authorization: Bearer {token}' over REST, JSON-RPC or WebSocket.",
        f"Revoke it with: pier token revoke {made['tokenID']}"])


def tokens_table(tokens: list[dict[str, Any]], now: float) -> str:
    if not tokens:
        return "no tokens"

    def state(token: dict[str, Any]) -> str:
        if token.get("revoked"):
            return f"revoked {when(token['revoked'])}"
        return "expired" if token.get("expires") and token["expires"] < now else "active"

    return table(["TOKEN ID", "ROLE", "CREATED", "EXPIRES", "STATE", "NAME"],
                 [[t.get("tokenID"), t.get("role"), when(t.get("created")), when(t.get("expires")) if
                   t.get("expires") else "never", state(t), t.get("name") or ""] for t in tokens])


def trusted(record: dict[str, Any]) -> str:
    """What `pier trust add` prints."""
    return f"trusted {record.get('name')} as {record.get('role')}\n" + key_values([
        ("fingerprint", record.get("fingerprint", "")), ("subject", record.get("subject", "")),
        ("valid until", str(record.get("notAfter") or "-"))])


def trusted_table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no trusted certificates"
    return table(["FINGERPRINT", "ROLE", "VALID UNTIL", "ADDED", "NAME"],
                 [[r.get("fingerprint"), r.get("role"), str(r.get("notAfter") or "-")[:10], when(r.get("added")),
                   r.get("name")] for r in records])


_AUDIT_COLUMNS = [("SEQ", 6), ("TIME", 23), ("WHO", 24), ("VIA", 5), ("PEER", 21), ("VERB", 22), ("TARGET", 36),
                  ("OUTCOME", 0)]


def audit_table(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no audit entries"
    return table([name for name, _ in _AUDIT_COLUMNS], [_audit_cells(entry) for entry in entries])


def audit_header() -> str:
    return _audit_row([name for name, _ in _AUDIT_COLUMNS])


def audit_line(entry: dict[str, Any]) -> str:
    """One audit entry in fixed columns, so that lines arriving one by one (--follow) line up."""
    return _audit_row(_audit_cells(entry))


def _audit_cells(entry: dict[str, Any]) -> list[str]:
    outcome = entry.get("outcome") or ""
    if entry.get("refused"):
        outcome = f"refused {entry.get('count', 1)}x {outcome}"
    if outcome != "ok" and entry.get("message"):
        outcome += f": {entry['message']}"
    return [str(entry.get("seq", "?")), clock(entry.get("time")), entry.get("who") or "-", entry.get("via") or "-",
            entry.get("peer") or "-", entry.get("verb") or "?", entry.get("target") or "-", outcome]


def _audit_row(cells: list[str]) -> str:
    return "  ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _AUDIT_COLUMNS, strict=True)).rstrip()


def init_tls_text(paths: dict[str, str], hostname: str, url: str) -> str:
    """What `pier init-tls` prints: the files made, then what to do next."""
    directory = paths["directory"]
    files = key_values([
        (paths["ca"], "the CA: clients check pierd's certificate with it (--ca)"),
        (paths["caKey"], "the CA's key: keep it private (readable by you only)"),
        (paths["server"], f"pierd's certificate, for {hostname}, localhost, 127.0.0.1 and ::1"),
        (paths["serverKey"], "its key"),
        (paths["client"], "a client certificate, to be trusted as admin (--cert)"),
        (paths["clientKey"], "its key (--key)")])
    client = f"--cert {paths['client']} --key {paths['clientKey']} --ca {paths['ca']}"
    return "\n".join([
        f"made a CA, a server certificate and a client certificate in {directory}:", _indent(files), "",
        "next:",
        f"  1. start pierd with them: pierd --tls-cert {paths['server']} --tls-key {paths['serverKey']} "
        f"--tls-ca {paths['ca']}",
        "     (pierd picks them up by itself when this is its state directory's tls/)",
        "  2. pierd trusts only the client certificate it made itself; trust this one as admin,",
        "     over the local socket (as root or a member of pier-admin):",
        f"       pier trust add {paths['client']} --role admin",
        "  3. call pierd over TLS with it:",
        f"       pier --url {url} {client} vms",
        "  Other client certificates: pier trust add CERT.pem --role viewer|operator|admin"])
