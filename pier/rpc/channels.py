"""Byte channels: what a verb that streams bytes (a serial console, a VNC display) hands a transport.

A verb declared with a `stream: websocket` route returns a `Channel` when its caller can carry one
(`CallContext.channel`); the REST facade then relays the channel's bytes over a WebSocket, both
ways, until either side ends. When the channel ends on its own, `end` says why, in words a user
reads, and of which kind, so that the transport picks its close code. Every layer may use this
module: it imports nothing else of pier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Why a channel ended, as a transport tells its client (a WebSocket close code each).
ENDED = "ended"  # the other end went away as it may (the VM stopped, the display closed)
TAKEN_OVER = "taken-over"  # another client took the channel over
FAILED = "failed"  # the channel broke


@dataclass(frozen=True)
class ChannelEnd:
    """How and why a channel ended."""

    kind: str  # ENDED, TAKEN_OVER or FAILED
    reason: str


class Channel(Protocol):
    """A two-way byte stream; `recv` on one thread and `send` on another may run at once."""

    name: str  # what it carries, for logs ("the serial console of VM <id>")

    def recv(self, size: int) -> bytes:
        """The next bytes (at most `size`), waiting for them; b'' once the channel has ended."""
        ...

    def send(self, data: bytes) -> None:
        """Send all of `data`; OSError once the channel has ended."""
        ...

    def close(self) -> None:
        """End the channel (idempotent); a waiting `recv` returns b''."""
        ...

    @property
    def end(self) -> ChannelEnd | None:
        """Why the channel ended, once it has (None while it is open)."""
        ...
