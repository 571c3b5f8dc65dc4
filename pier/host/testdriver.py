"""libvirt's embedded test driver: a node description on disk, and a check for the real thing.

`pierd` falls back to the test driver when libvirtd cannot be reached, and tests give each case
its own `test:///<file>` (the shared `test:///default` keeps state across a whole process).
"""

from __future__ import annotations

from pathlib import Path

import libvirt

NODE_XML = """<node>
  <cpu>
    <mhz>2400</mhz>
    <model>x86_64</model>
    <active>4</active>
    <nodes>1</nodes>
    <sockets>1</sockets>
    <cores>4</cores>
    <threads>1</threads>
  </cpu>
  <memory>16777216</memory>
  <network>
    <name>default</name>
    <uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
</node>
"""


def make_test_uri(path: Path | str) -> str:
    """Write a test-driver node description at `path` and return its `test:///` URI."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NODE_XML)
    return f"test://{path}"


def unusable_reason(uri: str) -> str | None:
    """Why `uri` cannot be opened right now, or None when it can."""
    libvirt.registerErrorHandler(lambda *args: None, None)
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return exc.get_error_message() or str(exc)
    connection.close()
    return None
