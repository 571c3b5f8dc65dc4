"""Handlers of the host's tunables and the rest of VDSM's host tier: KSM, MOM, log level, echo,
domain XMLs, LLDP."""

from __future__ import annotations

import logging
from typing import Any

from pier.host.services import DomainXmlService, KsmService, LldpService
from pier.rpc.errors import MomError
from pier.rpc.logcontrol import set_log_level
from pier.rpc.registry import CallContext, verb

log = logging.getLogger(__name__)

NO_MOM = ("Pier runs no MOM (memory overcommitment manager), so it has no policy to set; "
          "KSM is tuned with Host.setKsmTune")


class HostTuneApi:
    def __init__(self, ksm: KsmService, lldp: LldpService, domain_xmls: DomainXmlService) -> None:
        self._ksm = ksm
        self._lldp = lldp
        self._domain_xmls = domain_xmls

    @verb("Host.setKsmTune")
    def set_ksm_tune(self, ctx: CallContext, tuningParams: dict[str, int]) -> None:
        self._ksm.tune(tuningParams)

    @verb("Host.setMOMPolicy")
    def set_mom_policy(self, ctx: CallContext, policy: str) -> None:
        raise MomError(NO_MOM)

    @verb("Host.setMOMPolicyParameters")
    def set_mom_policy_parameters(self, ctx: CallContext, key_value_store: dict[str, Any]) -> None:
        raise MomError(NO_MOM)

    @verb("Host.setLogLevel")
    def set_log_level(self, ctx: CallContext, level: str, name: str = "") -> None:
        logger = set_log_level(level, name)
        log.info("log level of %s set to %s by %s", logger, level, ctx.describe())

    @verb("Host.echo")
    def echo(self, ctx: CallContext, message: str) -> str:
        log.info("echo from %s: %r", ctx.describe(), message)
        return message

    @verb("Host.dumpxmls")
    def dumpxmls(self, ctx: CallContext, vmList: list[str] | None = None) -> dict[str, str]:
        return self._domain_xmls.domain_xmls(vmList)

    @verb("Host.getLldp")
    def lldp(self, ctx: CallContext, filter: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._lldp.info((filter or {}).get("devices"))
