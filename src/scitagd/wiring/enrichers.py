# SPDX-License-Identifier: Apache-2.0
"""`enrichers:` -> the netlink and sock_ops samplers, as one group: they share the per-flow
metrics (same names, a `flavour` label each). netlink, when on, also finishes ends (an exact
last sample on demand); sock_ops alone finishes them with its latest sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..components import Enricher, Host
from ..config import Config

if TYPE_CHECKING:
    from ..enrich.netlink import LastSamples
    from ..enrich.skops import SkopsEnricher

__all__ = ["Enrichers", "enricher_key", "enricher_specs"]


class Enrichers:
    """The configured enrichers, started and stopped together."""

    name = "enrichers"

    def __init__(self, members: List[LastSamples], skops: Optional[SkopsEnricher]) -> None:
        self.members = members
        self.skops = skops

    @property
    def finisher(self) -> Optional[Enricher]:
        return self.members[0] if self.members else None

    async def start(self) -> None:
        for m in self.members:
            await m.start()

    async def stop(self) -> None:
        for m in self.members:
            await m.stop()


def enricher_key(conf: Config) -> Any:
    mode = conf.backends.firefly.enrichment_mode if conf.backends.firefly is not None else "lean"
    return (conf.enrichers, mode)


def enricher_specs(conf: Config, host: Host) -> List[Tuple[str, str, Any, Any]]:
    e = conf.enrichers
    if e is None or (e.netlink is None and e.skops is None):
        return []
    mode = enricher_key(conf)[1]

    def build(_built: Dict[str, Any]) -> Enrichers:
        from ..enrich.netlink import FlowMetrics

        members: List[LastSamples] = []
        skops = None
        if e.netlink is not None:
            from ..enrich.netlink import NetlinkEnricher

            members.append(NetlinkEnricher(host, e, mode))
        if e.skops is not None:
            from ..enrich.skops import SkopsEnricher

            skops = SkopsEnricher(host, e.period, mode)
            members.append(skops)
        host.register_metrics(FlowMetrics(host, members))
        return Enrichers(members, skops)

    return [("enricher", "enrichers", enricher_key(conf), build)]
