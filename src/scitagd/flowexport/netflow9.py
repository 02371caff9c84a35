# SPDX-License-Identifier: Apache-2.0
"""NetFlow v9 (RFC 3954) over UDP.

Config (`collector.netflow`, see conf.py): bindAddresses, port (2055), allowedSources,
receiveBuffer, templateTimeout, holdTime, maxExporters, maxDomains, maxTemplates,
anyExperiment, knownActivitiesOnly.

Same template state as IPFIX, keyed by (exporter address, source id). The header's count is
not trusted to cover template records (exporters disagree), so every flowset up to the end of
the datagram is read. Field type 31 IPV6_FLOW_LABEL is 3 bytes here. Options templates' scope
fields are typed from another number space: they are marked as scope and never read as IEs.
There are no enterprise or variable-length fields in v9: a length of 65535 is rejected.
"""

from __future__ import annotations

import struct
from typing import List

from . import templates as tpl
from .records import DecodeError, FlowRecord
from .session import Domain, Exporter, TemplateDecoder, parse_template_fields

__all__ = ["NetflowV9Decoder"]

_HDR = struct.Struct("!HHIIII")  # version, count, uptime, unix secs, sequence, source id
_SET = struct.Struct("!HH")
SET_TEMPLATE, SET_OPTIONS_TEMPLATE = 0, 1


class NetflowV9Decoder(TemplateDecoder):
    protocol = "netflow9"

    def _message(self, buf: memoryview, source: str, now: float, out: List[FlowRecord]) -> None:
        n = len(buf)
        if n < 20:
            raise DecodeError("truncated", f"datagram is {n} bytes: expected >= 20")
        version, _count, _uptime, secs, seq, source_id = _HDR.unpack_from(buf, 0)
        if version != 9:
            raise DecodeError("bad_version", f"version {version}: expected 9")
        sets = []
        pos = 20
        while n - pos >= 4:
            sid, slen = _SET.unpack_from(buf, pos)
            if slen < 4 or pos + slen > n:
                raise DecodeError("bad_set_length", f"flowset {sid} at byte {pos}: length {slen}, {n - pos} left")
            sets.append((sid, pos + 4, pos + slen))
            pos += slen
        ex = self.exporter(source, now)
        d = self.domain(ex, source_id)
        for sid, start, end in sets:
            try:
                if sid == SET_TEMPLATE:
                    self._templates(ex, d, source_id, buf, start, end, now, out)
                elif sid == SET_OPTIONS_TEMPLATE:
                    self._options_templates(ex, d, source_id, buf, start, end, now, out)
                elif sid >= 256:
                    self.data_set(ex, d, source_id, sid, buf, start, end, float(secs), now, out)
                else:
                    raise DecodeError("bad_set_id", f"flowset id {sid}: expected 0, 1 or >= 256")
            except DecodeError as e:
                self.rejects.add(source, e.reason, e.detail)
        self.check_sequence(ex, d, seq, 1)  # v9 numbers export datagrams

    def _templates(self, ex: Exporter, d: Domain, odid: int, buf: memoryview, pos: int, end: int,
                   now: float, out: List[FlowRecord]) -> None:
        while end - pos >= 4:
            tid, count = _SET.unpack_from(buf, pos)
            pos += 4
            if tid < 256:
                raise DecodeError("bad_template_id", f"template id {tid}: expected >= 256")
            if count == 0:
                raise DecodeError("bad_template", f"template {tid}: field count 0")
            fields, pos = parse_template_fields(buf, pos, end, count, tid, enterprise_bit=False)
            _no_varlen(fields, tid)
            self.add_template(ex, d, odid, tid, fields, False, 0, now, out)

    def _options_templates(self, ex: Exporter, d: Domain, odid: int, buf: memoryview, pos: int, end: int,
                           now: float, out: List[FlowRecord]) -> None:
        while end - pos >= 6:
            tid, scope_len, opt_len = struct.unpack_from("!HHH", buf, pos)
            pos += 6
            if tid < 256:
                raise DecodeError("bad_template_id", f"options template id {tid}: expected >= 256")
            if scope_len % 4 or opt_len % 4 or scope_len == 0:
                raise DecodeError("bad_template", f"options template {tid}: scope length {scope_len}, "
                                  f"option length {opt_len}: expected multiples of 4, scope > 0")
            scope, pos = parse_template_fields(buf, pos, end, scope_len // 4, tid, enterprise_bit=False)
            opts, pos = parse_template_fields(buf, pos, end, opt_len // 4, tid, enterprise_bit=False)
            fields = [tpl.Field(f.ie, tpl.SCOPE, f.length) for f in scope] + opts
            _no_varlen(fields, tid)
            self.add_template(ex, d, odid, tid, fields, True, len(scope), now, out)
            if end - pos < 6:
                break  # padding


def _no_varlen(fields: List[tpl.Field], tid: int) -> None:
    for i, f in enumerate(fields):
        if f.length == tpl.VARLEN:
            raise DecodeError("bad_template", f"template {tid} field {i}: length 65535 (variable) is not NetFlow v9")
