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
        while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/$defs/"):
            node = schema.defs.get(node["$ref"][8:], {})
        node = (node.get("properties") or {}).get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/$defs/"):
        node = schema.defs.get(node["$ref"][8:], {})
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
