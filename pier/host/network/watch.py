"""Whether the kernel's network changed since the last look: rtnetlink notifications on a plain socket.

A netlink socket bound to the link, address and route multicast groups receives a message for
every change the kernel makes, as part of making it: once `ip addr add` has returned, its message
is in the socket. `changed()` drains what arrived without waiting and says whether anything did;
a lost notification (ENOBUFS when the socket overflowed) counts as a change. It is a plain
standard-library socket, not a pyroute2 one: pyroute2 reads its sockets from a shared event loop
while other requests run, so pending data would vanish from a select() into its queues.
"""

from __future__ import annotations

import socket
import threading

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE


def _open(netns: str | None) -> socket.socket:
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        sock.bind((0, GROUPS))
        return sock
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def inside() -> None:  # setns() moves only the calling thread: a thread of its own, then gone
        from pyroute2.netns import setns

        try:
            setns(netns, flags=0)
            made.append(_open(None))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=inside, name="netns-watch-open")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class ChangeWatch:
    """Says whether the network changed since the previous call (True the first time)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._sock: socket.socket | None = None

    def changed(self) -> bool:
        if self._sock is None:
            self._sock = _open(self._netns)
            self._sock.setblocking(False)
            return True
        seen = False
        while True:
            try:
                if not self._sock.recv(65536):
                    return True
                seen = True
            except BlockingIOError:
                return seen
            except OSError:  # ENOBUFS: some notifications were lost
                return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
