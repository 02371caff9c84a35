"""`enrichers:` -> the netlink and sock_ops samplers. netlink, when on, also finishes ends (an
exact last sample on demand); sock_ops alone finishes them with its latest sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from ..components import Enricher, Host
from ..config import Config

__all__ = ["build_enrichers"]

if TYPE_CHECKING:
    from ..enrich.netlink import LastSamples
    from ..enrich.skops import SkopsEnricher


def build_enrichers(conf: Config, host: Host) -> Tuple[List[Enricher], Optional[Enricher], Optional[SkopsEnricher]]:
    e = conf.enrichers
    if e is None or (e.netlink is None and e.skops is None):
        return [], None, None
    from ..enrich.netlink import FlowMetrics

    mode = conf.backends.firefly.enrichment_mode if conf.backends.firefly is not None else "lean"
    built: List[LastSamples] = []
    skops = None
    if e.netlink is not None:
        from ..enrich.netlink import NetlinkEnricher

        built.append(NetlinkEnricher(host, e, mode))
    if e.skops is not None:
        from ..enrich.skops import SkopsEnricher

        skops = SkopsEnricher(host, e.period, mode)
        built.append(skops)
    host.register_metrics(FlowMetrics(host, built))
    return list(built), built[0], skops
