"""The agent's log levels, changed while it runs (Host.setLogLevel), and the loggers kept quiet.

The wire libraries' loggers write whole frames at DEBUG, bearer tokens and secrets included, so
they never go below INFO: neither from --log-level at start nor from a call at run time.
"""

from __future__ import annotations

import logging

from pier.rpc.errors import InvalidParams

# The libraries' loggers that at DEBUG write whole frames and headers, bearer tokens and answers
# with secrets included.
WIRE_LOGGERS = ("stomp.py", "websockets", "pier.transports.ws.server")

# VDSM's LoggingLevel names, with its two aliases.
LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
          "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL, "CRIT": logging.CRITICAL}


def quiet_wire_loggers() -> None:
    """Keep the wire loggers at INFO or above, whatever the root logger's level."""
    for wire in WIRE_LOGGERS:
        logging.getLogger(wire).setLevel(max(logging.INFO, logging.getLogger().level))


def is_wire_logger(name: str) -> bool:
    """Whether `name` is one of the wire loggers or below one."""
    return any(name == wire or name.startswith(wire + ".") for wire in WIRE_LOGGERS)


def set_log_level(level: str, name: str = "") -> str:
    """Set logger `name`'s level ('' or 'root': the root logger, which every other logger follows
    unless given its own); the name of the logger set. A wire logger cannot go below INFO."""
    if level.upper() not in LEVELS:
        raise InvalidParams(f"level: {level!r} is not one of {', '.join(LEVELS)}", data={"field": "params.level"})
    value = LEVELS[level.upper()]
    if is_wire_logger(name) and value < logging.INFO:
        raise InvalidParams(f"name: {name} writes whole frames with their credentials at DEBUG, so it stays at "
                            "INFO or above", data={"field": "params.name"})
    logger = logging.getLogger(None if name in ("", "root") else name)
    logger.setLevel(value)
    if logger is logging.getLogger():
        quiet_wire_loggers()
    return logger.name
