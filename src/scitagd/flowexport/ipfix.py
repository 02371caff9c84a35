# SPDX-License-Identifier: Apache-2.0
"""IPFIX (RFC 7011) over UDP, PSAMP packet reports (RFC 5476) included.

Config (`collector.ipfix`, see conf.py): bindAddresses, port (4739), allowedSources,
receiveBuffer, templateTimeout (1800 s), holdTime (2 s), maxExporters, maxDomains,
maxTemplates, anyExperiment, knownActivitiesOnly.

Templates and options templates are kept per (exporter address, observation domain), with
withdrawal (field count 0; template id 2/3 withdraws all) and expiry. Enterprise elements are
skipped by their length, variable-length elements walked. A flow record with IE 31
flowLabelIPv6 is tagged through the label; a PSAMP record's IE 315 dataLinkFrameSection or
313 ipHeaderPacketSection is parsed like an sFlow sampled header (label and option 0x1E).
Sampling rates come from the record (IE 34, 50, 305/306) or an options record (per domain, or
per selectorId/samplerId). The message is checked whole (header length, every set header)
before any set is used, so a cut message changes no state.
"""

from __future__ import annotations

import struct
from typing import List

from .records import DecodeError, FlowRecord
from .session import Domain, Exporter, TemplateDecoder, parse_template_fields

__all__ = ["IpfixDecoder"]

_HDR = struct.Struct("!HHIII")  # version, length, export time, sequence, observation domain
_SET = struct.Struct("!HH")
SET_TEMPLATE, SET_OPTIONS_TEMPLATE = 2, 3


class IpfixDecoder(TemplateDecoder):
    protocol = "ipfix"

    def _message(self, buf: memoryview, source: str, now: float, out: List[FlowRecord]) -> None:
        n = len(buf)
        if n < 16:
            raise DecodeError("truncated", f"message is {n} bytes: expected >= 16")
        version, length, export_time, seq, odid = _HDR.unpack_from(buf, 0)
        if version != 10:
            raise DecodeError("bad_version", f"version {version}: expected 10")
        if length != n:
            raise DecodeError("bad_length", f"header length {length}, datagram is {n} bytes")
        sets = []
        pos = 16
        while pos < n:
            if pos + 4 > n:
                raise DecodeError("truncated", f"set header cut at byte {pos} of {n}")
            sid, slen = _SET.unpack_from(buf, pos)
            if slen < 4 or pos + slen > n:
                raise DecodeError("bad_set_length", f"set {sid} at byte {pos}: length {slen}, {n - pos} bytes left")
            sets.append((sid, pos + 4, pos + slen))
            pos += slen
        ex = self.exporter(source, now)
        d = self.domain(ex, odid)
        records = 0
        for sid, start, end in sets:
            try:
                if sid in (SET_TEMPLATE, SET_OPTIONS_TEMPLATE):
                    self._templates(ex, d, odid, buf, start, end, sid == SET_OPTIONS_TEMPLATE, now, out)
                elif sid >= 256:
                    records += self.data_set(ex, d, odid, sid, buf, start, end, float(export_time), now, out)
                else:
                    raise DecodeError("bad_set_id", f"set id {sid}: expected 2, 3 or >= 256")
            except DecodeError as e:  # one bad set does not take the good ones with it
                self.rejects.add(source, e.reason, e.detail)
        self.check_sequence(ex, d, seq, records)

    def _templates(self, ex: Exporter, d: Domain, odid: int, buf: memoryview, pos: int, end: int,
                   options: bool, now: float, out: List[FlowRecord]) -> None:
        while end - pos >= 4:
            tid, count = _SET.unpack_from(buf, pos)
            pos += 4
            if count == 0:
                if tid in (SET_TEMPLATE, SET_OPTIONS_TEMPLATE):
                    self.withdraw(d, tid, all_of=tid == SET_OPTIONS_TEMPLATE)
                elif tid >= 256:
                    self.withdraw(d, tid)
                else:
                    raise DecodeError("bad_template_id", f"withdrawal of template {tid}: expected 2, 3 or >= 256")
                continue
            if tid < 256:
                raise DecodeError("bad_template_id", f"template id {tid}: expected >= 256")
            scope = 0
            if options:
                if pos + 2 > end:
                    raise DecodeError("template_overrun", f"options template {tid}: scope count cut at the set end")
                (scope,) = struct.unpack_from("!H", buf, pos)
                pos += 2
                if scope == 0 or scope > count:
                    raise DecodeError("bad_template",
                                      f"options template {tid}: scope field count {scope}, expected 1..{count}")
            fields, pos = parse_template_fields(buf, pos, end, count, tid, enterprise_bit=True)
            self.add_template(ex, d, odid, tid, fields, options, scope, now, out)
