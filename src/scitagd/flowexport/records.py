# SPDX-License-Identifier: Apache-2.0
"""The decoders' output (one `FlowRecord` per flow record or sampled packet) and their rejects.

Addresses stay raw bytes (4 or 16): the hot path never formats them; `src_text`/`dst_text` do
when someone looks. `bytes` are IP octets (header and payload, RFC 7012's octetDeltaCount):
IPFIX/NetFlow counters as sent, sFlow/PSAMP the sampled packet's IP length; both scaled by the
sampling rate.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import Deque, Dict, Optional, Tuple

import msgspec

from ..errors import InputError

__all__ = ["DIR_EGRESS", "DIR_INGRESS", "DecodeError", "FlowRecord", "Reject", "Rejects"]

log = logging.getLogger("scitagd.flowexport")

DIR_INGRESS, DIR_EGRESS = 0, 1


class FlowRecord(msgspec.Struct, gc=False):
    exporter: str  # IPFIX/NetFlow: the UDP source address; sFlow: the agent address
    domain: int  # observation domain (IPFIX), source id (NetFlow v9), sub-agent id (sFlow)
    ingress: Optional[int]  # interface indices when the exporter says
    egress: Optional[int]
    direction: Optional[int]  # 0 ingress, 1 egress (IPFIX flowDirection); None when unknown
    protocol: int
    family: int  # 4, 6, or 0 when the record carries no IP addresses
    src: bytes
    dst: bytes
    sport: int
    dport: int
    flow_label: Optional[int]  # IPv6 only, when exported
    experiment: Optional[int]  # None: untagged
    activity: Optional[int]
    bytes: int
    packets: int
    time: float  # export time (IPFIX/NetFlow header) or receive time (sFlow), unix seconds
    via: str = ""  # how the tag was seen: "label", "hbh", "dst"; "" when untagged

    @property
    def src_text(self) -> str:
        return _ntop(self.src)

    @property
    def dst_text(self) -> str:
        return _ntop(self.dst)

    @property
    def interface(self) -> Optional[int]:
        """The interface the record was observed on: egress for egress records, else ingress."""
        if self.direction == DIR_EGRESS and self.egress is not None:
            return self.egress
        return self.ingress if self.ingress is not None else self.egress


def _ntop(b: bytes) -> str:
    if len(b) == 16:
        return socket.inet_ntop(socket.AF_INET6, b)
    if len(b) == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    return ""


class Reject(msgspec.Struct, frozen=True):
    """A datagram, set or record the decoder refused: `reason` is a short stable key (a metric
    label), `detail` says which field, which value and what was expected."""

    exporter: str
    reason: str
    detail: str


class DecodeError(InputError):
    """Raised inside a decoder, caught at its entry point and turned into a counted Reject."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason)
        self.detail = detail


class Rejects:
    """Rejects counted per (exporter, reason), the last few kept for inspection, and one log
    line per exporter and reason per second at most. Exporters past `max_exporters` are counted
    under "other", so a spoofed-source flood cannot grow this."""

    def __init__(self, protocol: str, max_exporters: int = 1024, keep: int = 100) -> None:
        self.protocol = protocol
        self.max_exporters = max_exporters
        self.counts: Dict[Tuple[str, str], int] = {}
        self._exporters: Dict[str, None] = {}
        self.last: Deque[Reject] = deque(maxlen=keep)
        self._logged: Dict[Tuple[str, str], float] = {}

    def add(self, exporter: str, reason: str, detail: str) -> None:
        if exporter not in self._exporters:
            if len(self._exporters) >= self.max_exporters:
                exporter = "other"
            else:
                self._exporters[exporter] = None
        key = (exporter, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.last.append(Reject(exporter, reason, detail))
        now = time.monotonic()
        if now - self._logged.get(key, -10.0) >= 1.0:
            if len(self._logged) > 4 * self.max_exporters:
                self._logged.clear()
            self._logged[key] = now
            log.warning("%s rejected exporter=%s reason=%s detail=%r", self.protocol, exporter, reason, detail)

    def total(self, reason: str | None = None) -> int:
        return sum(v for (_, r), v in self.counts.items() if reason is None or r == reason)
