# SPDX-License-Identifier: Apache-2.0
"""SciTags from the network's own flow exports: IPFIX (with PSAMP), NetFlow v9 and sFlow v5.

Every packet scitagd marks carries its experiment and activity in the IPv6 flow label (or an
extension-header option); routers and switches that export flows see it. The decoders here turn
export datagrams into plain `FlowRecord`s (tagged or not), the aggregator counts them per minute,
exporter, interface, direction and tag, and `receiver` holds the asyncio sockets. Nothing here
writes to a store: the collector wires the aggregator's batches into one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import FlowRecord, Reject
    from .tagging import TagMatcher

__all__ = ["FlowRecord", "Reject", "TagMatcher"]


def __getattr__(name: str) -> Any:
    """Imported on first use: loading the collector's config (flowexport.conf) loads no decoder."""
    if name in ("FlowRecord", "Reject"):
        from . import records

        return getattr(records, name)
    if name == "TagMatcher":
        from .tagging import TagMatcher

        return TagMatcher
    raise AttributeError(name)
