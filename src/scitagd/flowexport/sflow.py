# SPDX-License-Identifier: Apache-2.0
"""sFlow v5 datagrams: flow samples (plain and expanded) with raw packet headers (record 1).

Config (`collector.sflow`, see conf.py): bindAddresses, port (6343), allowedSources,
receiveBuffer, anyExperiment, knownActivitiesOnly.

Each sampled packet becomes one FlowRecord with bytes and packets multiplied by the sample's
sampling rate. Bytes are IP octets, as IPFIX's octetDeltaCount counts them: the frame length
less the stripped bytes (the FCS) less the link header. Counter samples and other records are
skipped; a sample whose records do not add up to its length is rejected (pmacct's first
datagram to an IPv6 collector is such a one). sFlow keeps no per-exporter state beyond the
reject counters, so nothing here needs bounding but those. The exporter of a record is the
agent address the datagram names.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import List, Optional

from .packet import Packet, PacketError, parse_ethernet, parse_ip
from .records import DIR_EGRESS, DIR_INGRESS, DecodeError, FlowRecord, Rejects
from .tagging import UNTAGGED, TagMatcher

__all__ = ["SflowDecoder", "packet_record"]

_U32 = struct.Struct("!I")
_HDR = struct.Struct("!III")  # sub-agent, sequence, uptime  (after the agent address)
_SAMPLE = struct.Struct("!II")
_FLOW = struct.Struct("!IIIIIIII")  # seq, source id, rate, pool, drops, input, output, nrecords
_XFLOW = struct.Struct("!IIIIIIIIIII")  # expanded: seq, src type, src index, rate, pool, drops,
#                                          in fmt, in value, out fmt, out value, nrecords
_RAW = struct.Struct("!IIII")  # header protocol, frame length, stripped, header length
HEADER_ETHERNET, HEADER_IPV4, HEADER_IPV6 = 1, 11, 12
MAX_SAMPLES = 1024  # a 64 KiB datagram holds far fewer real samples
MAX_RECORDS = 256


class SflowDecoder:
    def __init__(self, matcher: TagMatcher, max_exporters: int = 1024) -> None:
        self.matcher = matcher
        self.rejects = Rejects("sflow", max_exporters)
        self.datagrams = 0
        self.samples = 0
        self.skipped = 0  # counter samples, unknown sample and record formats
        self.not_ip = 0

    def decode(self, data: bytes | memoryview, source: str, now: float | None = None) -> List[FlowRecord]:
        """Every record of one datagram; [] and a counted reject when it is malformed."""
        out: List[FlowRecord] = []
        self.datagrams += 1
        try:
            self._decode(memoryview(data), source, time.time() if now is None else now, out)
        except DecodeError as e:
            self.rejects.add(source, e.reason, e.detail)
            return []
        except (struct.error, IndexError, ValueError) as e:  # defensive: every path checks lengths
            self.rejects.add(source, "malformed", f"{type(e).__name__}: {e}")
            return []
        return out

    def _decode(self, buf: memoryview, source: str, now: float, out: List[FlowRecord]) -> None:
        n = len(buf)
        if n < 28:
            raise DecodeError("truncated", f"datagram is {n} bytes: expected >= 28")
        version, atype = struct.unpack_from("!II", buf, 0)
        if version != 5:
            raise DecodeError("bad_version", f"version {version}: expected 5")
        if atype == 1:
            agent = socket.inet_ntop(socket.AF_INET, buf[8:12])
            off = 12
        elif atype == 2:
            if n < 40:
                raise DecodeError("truncated", f"datagram is {n} bytes: expected >= 40 with an IPv6 agent")
            agent = socket.inet_ntop(socket.AF_INET6, buf[8:24])
            off = 24
        else:
            raise DecodeError("bad_header", f"agent address type {atype}: expected 1 or 2")
        sub_agent, _seq, _uptime = _HDR.unpack_from(buf, off)
        off += 12
        (nsamples,) = _U32.unpack_from(buf, off)
        off += 4
        if nsamples > MAX_SAMPLES or nsamples * 8 > n - off:
            raise DecodeError("bad_count", f"{nsamples} samples in {n - off} bytes")
        for i in range(nsamples):
            if off + 8 > n:
                raise DecodeError("truncated", f"sample {i} header at byte {off} of {n}")
            fmt, slen = _SAMPLE.unpack_from(buf, off)
            off += 8
            end = off + slen
            if end > n or slen % 4:
                raise DecodeError("bad_length", f"sample {i} length {slen} at byte {off}: {n - off} left")
            if fmt == 1 or fmt == 3:
                self._flow_sample(buf, off, end, fmt == 3, agent, sub_agent, now, out, i)
                self.samples += 1
            else:
                self.skipped += 1
            off = end
        if off != n:
            raise DecodeError("bad_length", f"{n - off} bytes after the last of {nsamples} samples")

    def _flow_sample(self, buf: memoryview, off: int, end: int, expanded: bool, agent: str,
                     sub_agent: int, now: float, out: List[FlowRecord], i: int) -> None:
        if expanded:
            if off + 44 > end:
                raise DecodeError("truncated", f"expanded flow sample {i} is {end - off} bytes: expected >= 44")
            _, _stype, sindex, rate, _, _, _, inp, ofmt, outp, nrec = _XFLOW.unpack_from(buf, off)
            off += 44
            egress: Optional[int] = outp if ofmt == 0 else None
        else:
            if off + 32 > end:
                raise DecodeError("truncated", f"flow sample {i} is {end - off} bytes: expected >= 32")
            _, source_id, rate, _, _, inp, outp, nrec = _FLOW.unpack_from(buf, off)
            off += 32
            sindex = source_id & 0xFFFFFF
            inp &= 0x3FFFFFFF
            egress = outp & 0x3FFFFFFF if outp >> 30 == 0 else None
        if rate == 0:
            raise DecodeError("bad_rate", f"flow sample {i} sampling rate 0: expected >= 1")
        if nrec > MAX_RECORDS or nrec * 8 > end - off:
            raise DecodeError("bad_count", f"flow sample {i}: {nrec} records in {end - off} bytes")
        ingress: Optional[int] = inp if inp != 0x3FFFFFFF else None
        if egress == 0x3FFFFFFF:
            egress = None
        direction = DIR_INGRESS if sindex == ingress else DIR_EGRESS if sindex == egress else None
        matcher = self.matcher
        for j in range(nrec):
            if off + 8 > end:
                raise DecodeError("truncated", f"flow sample {i} record {j} at byte {off}")
            rfmt, rlen = _SAMPLE.unpack_from(buf, off)
            off += 8
            rend = off + rlen
            if rend > end or rlen % 4:
                raise DecodeError("bad_length", f"flow sample {i} record {j} length {rlen}: {end - off} left")
            if rfmt != 1:
                self.skipped += 1
                off = rend
                continue
            # record 1, raw packet header (inlined: this is the hot path)
            if off + 16 > rend:
                raise DecodeError("truncated", f"raw header record is {rend - off} bytes: expected >= 16")
            proto, frame_len, stripped, hlen = _RAW.unpack_from(buf, off)
            if off + 16 + hlen > rend:
                raise DecodeError("bad_length", f"sampled header length {hlen}: record has {rend - off - 16} bytes")
            hdr = buf[off + 16:off + 16 + hlen]
            off = rend
            pkt: Optional[Packet]
            try:
                if proto == HEADER_ETHERNET:
                    pkt = parse_ethernet(hdr)
                elif proto in (HEADER_IPV4, HEADER_IPV6):
                    pkt = parse_ip(hdr)
                else:
                    pkt = None
            except PacketError:
                pkt = None
            if pkt is None:
                self.not_ip += 1
                continue
            # frame length less the stripped FCS less the link header: IP octets, as IPFIX counts
            nbytes = frame_len - (stripped if stripped <= frame_len else 0) - pkt.l2_length
            if nbytes <= 0:
                nbytes = pkt.ip_length
            if pkt.ext_tag is None and pkt.flow_label is not None:
                tag = matcher.rows[pkt.flow_label & 0x3FEFC]
                out.append(FlowRecord(agent, sub_agent, ingress, egress, direction, pkt.protocol, pkt.family,
                                      pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.flow_label, tag[0], tag[1],
                                      nbytes * rate, rate, now, tag[2]))
            else:
                out.append(packet_record(matcher, pkt, agent, sub_agent, ingress, egress, direction, nbytes, 1,
                                         rate, now))
        if off != end:
            raise DecodeError("bad_length", f"flow sample {i}: {end - off} bytes after its {nrec} records")


def packet_record(matcher: TagMatcher, pkt: Packet, exporter: str, domain: int, ingress: Optional[int],
                  egress: Optional[int], direction: Optional[int], nbytes: int, npackets: int, rate: int,
                  now: float) -> FlowRecord:
    """A sampled packet as a FlowRecord: the extension option wins over the label."""
    via = ""
    tag = UNTAGGED
    if pkt.ext_tag is not None:
        tag = matcher.option(*pkt.ext_tag)
        if tag[0] is not None:
            via = pkt.ext_via
    if not via and pkt.flow_label is not None:
        tag = matcher.table[pkt.flow_label & 0x3FEFC]
        if tag[0] is not None:
            via = "label"
    return FlowRecord(exporter, domain, ingress, egress, direction, pkt.protocol, pkt.family, pkt.src,
                      pkt.dst, pkt.sport, pkt.dport, pkt.flow_label, tag[0], tag[1], nbytes * rate,
                      npackets * rate, now, via)
