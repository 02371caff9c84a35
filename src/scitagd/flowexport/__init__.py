# SPDX-License-Identifier: Apache-2.0
"""SciTags from the network's own flow exports: IPFIX (with PSAMP), NetFlow v9 and sFlow v5.

Every packet scitagd marks carries its experiment and activity in the IPv6 flow label (or an
extension-header option); routers and switches that export flows see it. The decoders here turn
export datagrams into plain `FlowRecord`s (tagged or not), the aggregator counts them per minute,
exporter, interface, direction and tag, and `receiver` holds the asyncio sockets. Nothing here
writes to a store: the collector wires the aggregator's batches into one.
"""

from .records import FlowRecord, Reject
from .tagging import TagMatcher

__all__ = ["FlowRecord", "Reject", "TagMatcher"]
