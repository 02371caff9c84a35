# SPDX-License-Identifier: Apache-2.0
"""Per-exporter template state shared by the IPFIX and NetFlow v9 decoders, bounded everywhere.

State lives per (exporter address, observation domain): templates with the time they were last
(re)sent, sampling rates learnt from options records, the next expected sequence number, and
data sets that arrived before their template (held `holdTime` seconds, then counted as
undecodable). Limits: `maxExporters`, `maxDomains` per exporter, `maxTemplates` per domain,
held sets and bytes per exporter; a template past the limit is rejected (the ones in use stay),
templates not refreshed for `templateTimeout` seconds expire, exporters idle that long go.
"""

from __future__ import annotations

import struct
import time
from typing import Dict, List, Optional, Tuple

import msgspec

from . import templates as tpl
from .packet import Packet, PacketError, parse_ethernet, parse_ip
from .records import DecodeError, FlowRecord, Rejects
from .sflow import packet_record
from .tagging import TagMatcher

__all__ = ["Counters", "Domain", "Exporter", "Limits", "Template", "TemplateDecoder", "parse_template_fields"]


class Limits(msgspec.Struct, frozen=True):
    max_exporters: int = 1024
    max_domains: int = 64
    max_templates: int = 512
    template_timeout: float = 1800.0  # OVS resends every 600 s, RFC 7011 suggests 3 x refresh
    hold_time: float = 2.0
    max_held_sets: int = 64  # per exporter
    max_held_bytes: int = 1 << 20  # per exporter
    max_total_held_bytes: int = 16 << 20  # over all exporters
    max_total_templates: int = 65536  # over all exporters and domains
    generate_rate: float = 50.0  # template decoders generated per second (burst: 10 s worth)


class Template:
    __slots__ = ("compiled", "refreshed")

    def __init__(self, compiled: tpl.Compiled, now: float) -> None:
        self.compiled = compiled
        self.refreshed = now


class Held:
    __slots__ = ("arrived", "body", "export_time", "tid")

    def __init__(self, tid: int, body: bytes, export_time: float, arrived: float) -> None:
        self.tid = tid
        self.body = body
        self.export_time = export_time
        self.arrived = arrived


class Domain:
    __slots__ = ("held", "rate", "selector_rates", "seq_next", "templates")

    def __init__(self) -> None:
        self.templates: Dict[int, Template] = {}
        self.rate = 1
        self.selector_rates: Dict[int, int] = {}
        self.seq_next: Optional[int] = None
        self.held: List[Held] = []


class Exporter:
    __slots__ = ("domains", "held_bytes", "held_sets", "last_seen", "lost", "name")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.domains: Dict[int, Domain] = {}
        self.last_seen = now
        self.held_sets = 0
        self.held_bytes = 0
        self.lost = 0  # records (IPFIX) or datagrams (NetFlow v9) missing by sequence number


class Counters(msgspec.Struct):
    messages: int = 0
    records: int = 0
    templates: int = 0  # template records accepted (new, changed or refreshed)
    template_changes: int = 0
    withdrawals: int = 0
    expired_templates: int = 0
    held_sets: int = 0
    held_decoded: int = 0
    undecodable_sets: int = 0  # no template in time
    skipped_sets: int = 0  # templates without IP addresses (L2-only records)
    not_ip: int = 0  # PSAMP sections that do not carry IP
    sequence_gaps: int = 0
    options_records: int = 0
    generic_sets: int = 0  # flow sets decoded by the generic walker (generation budget spent)


MAX_SELECTORS = 64


class TemplateDecoder:
    """Template bookkeeping and data set decoding; subclasses parse their message format."""

    protocol = "ipfix"

    def __init__(self, matcher: TagMatcher, limits: Limits | None = None) -> None:
        self.matcher = matcher
        self.limits = limits or Limits()
        self.rejects = Rejects(self.protocol, self.limits.max_exporters)
        self.exporters: Dict[str, Exporter] = {}
        self.counters = Counters()
        self._last_sweep = 0.0
        self._tokens = 10 * self.limits.generate_rate
        self._tokens_at = 0.0
        self.total_templates = 0
        self.total_held_bytes = 0

    # --- entry point ----------------------------------------------------------------------

    def decode(self, data: bytes | memoryview, source: str, now: float | None = None) -> List[FlowRecord]:
        """All records of one datagram. Never raises: a malformed message is counted as a
        reject (per exporter, with a reason) and whatever it carried before the fault is kept
        only if it was complete sets."""
        now = time.time() if now is None else now
        out: List[FlowRecord] = []
        self.counters.messages += 1
        if now - self._last_sweep >= 10.0:
            self.sweep(now)
        try:
            self._message(memoryview(data), source, now, out)
        except DecodeError as e:
            self.rejects.add(source, e.reason, e.detail)
        except (struct.error, IndexError, ValueError, OverflowError) as e:  # defensive
            self.rejects.add(source, "malformed", f"{type(e).__name__}: {e}")
        self.counters.records += len(out)
        return out

    def _message(self, buf: memoryview, source: str, now: float, out: List[FlowRecord]) -> None:
        raise NotImplementedError

    # --- state ----------------------------------------------------------------------------

    def exporter(self, source: str, now: float) -> Exporter:
        ex = self.exporters.get(source)
        if ex is None:
            if len(self.exporters) >= self.limits.max_exporters and now - self._last_sweep >= 1.0:
                self.sweep(now)  # at most once a second: a flood of new sources must not sweep each time
            if len(self.exporters) >= self.limits.max_exporters:
                raise DecodeError("exporter_limit", f"{len(self.exporters)} exporters known: maxExporters reached")
            ex = self.exporters[source] = Exporter(source, now)
        ex.last_seen = now
        return ex

    def domain(self, ex: Exporter, odid: int) -> Domain:
        d = ex.domains.get(odid)
        if d is None:
            if len(ex.domains) >= self.limits.max_domains:
                raise DecodeError("domain_limit",
                                  f"observation domain {odid}: {len(ex.domains)} known, maxDomains reached")
            d = ex.domains[odid] = Domain()
        return d

    def sweep(self, now: float) -> None:
        """Expire templates, held sets and idle exporters; bounded work per known state."""
        self._last_sweep = now
        timeout = self.limits.template_timeout
        for name in [n for n, ex in self.exporters.items() if now - ex.last_seen > timeout]:
            ex = self.exporters.pop(name)
            self.total_held_bytes -= ex.held_bytes
            for d in ex.domains.values():
                self.counters.expired_templates += len(d.templates)
                self.total_templates -= len(d.templates)
                self.counters.undecodable_sets += len(d.held)
        for ex in self.exporters.values():
            for d in ex.domains.values():
                old = [t for t, v in d.templates.items() if now - v.refreshed > timeout]
                for t in old:
                    del d.templates[t]
                self.counters.expired_templates += len(old)
                self.total_templates -= len(old)
                self._expire_held(ex, d, now)

    def _expire_held(self, ex: Exporter, d: Domain, now: float) -> None:
        if not d.held:
            return
        keep = [h for h in d.held if now - h.arrived <= self.limits.hold_time]
        for h in d.held:
            if now - h.arrived > self.limits.hold_time:
                ex.held_sets -= 1
                ex.held_bytes -= len(h.body)
                self.total_held_bytes -= len(h.body)
                self.counters.undecodable_sets += 1
                self.rejects.add(ex.name, "no_template",
                                 f"data set for template {h.tid} and no template within {self.limits.hold_time} s")
        d.held = keep

    def add_template(self, ex: Exporter, d: Domain, odid: int, tid: int, fields: List[tpl.Field],
                     options: bool, scope_count: int, now: float, out: List[FlowRecord]) -> None:
        tpl.check_fields(fields, tid)
        key = tuple(fields)
        cur = d.templates.get(tid)
        if cur is not None and cur.compiled.fields == key and cur.compiled.options == options:
            cur.refreshed = now
        else:
            if cur is None:
                if len(d.templates) >= self.limits.max_templates:
                    raise DecodeError("template_limit", f"template {tid} in domain {odid}: {len(d.templates)} known, "
                                      "maxTemplates reached")
                if self.total_templates >= self.limits.max_total_templates:
                    raise DecodeError("template_limit",
                                      f"template {tid}: {self.total_templates} templates known over all exporters")
                self.total_templates += 1
            else:
                self.counters.template_changes += 1
            d.templates[tid] = Template(tpl.compiled(key, options, scope_count), now)
        self.counters.templates += 1
        if d.held:
            self._expire_held(ex, d, now)
            self._replay(ex, d, odid, tid, now, out)

    def withdraw(self, d: Domain, tid: int, all_of: Optional[bool] = None) -> None:
        """One template, or (all_of set) every (options) template of the domain."""
        self.counters.withdrawals += 1
        if all_of is None:
            if d.templates.pop(tid, None) is not None:
                self.total_templates -= 1
        else:
            for t in [t for t, v in d.templates.items() if v.compiled.options == all_of]:
                del d.templates[t]
                self.total_templates -= 1

    def _replay(self, ex: Exporter, d: Domain, odid: int, tid: int, now: float, out: List[FlowRecord]) -> None:
        mine = [h for h in d.held if h.tid == tid]
        if not mine:
            return
        d.held = [h for h in d.held if h.tid != tid]
        for h in mine:
            ex.held_sets -= 1
            ex.held_bytes -= len(h.body)
            self.total_held_bytes -= len(h.body)
            self.counters.held_decoded += 1
            body = memoryview(h.body)
            try:
                self.data_set(ex, d, odid, tid, body, 0, len(body), h.export_time, now, out, hold=False)
            except DecodeError as e:
                self.rejects.add(ex.name, e.reason, e.detail)

    # --- data -----------------------------------------------------------------------------

    def data_set(self, ex: Exporter, d: Domain, odid: int, tid: int, buf: memoryview, pos: int, end: int,
                 export_time: float, now: float, out: List[FlowRecord], hold: bool = True) -> int:
        """Decode one data set; returns the number of records it held (for sequence numbers)."""
        t = d.templates.get(tid)
        if t is not None and now - t.refreshed > self.limits.template_timeout:
            del d.templates[tid]
            self.counters.expired_templates += 1
            self.total_templates -= 1
            t = None
        if t is None:
            if hold:
                self._hold(ex, d, tid, bytes(buf[pos:end]), export_time, now)
            return 0
        c = t.compiled
        fn = c.decode
        if fn is None and c.kind == "flow" and self._may_generate(now):
            fn = c.generate()
        if fn is not None:
            mark = len(out)
            try:
                return fn(buf, pos, end, ex.name, odid, export_time, d.rate, d.selector_rates,
                          self.matcher.rows, FlowRecord, out)
            except (tpl._Overrun, struct.error, IndexError) as e:
                del out[mark:]
                raise DecodeError("field_overrun",
                                  f"template {tid}: a variable-length field overruns the data set "
                                  f"({type(e).__name__})") from None
        if c.kind == "other":
            self.counters.skipped_sets += 1
            return 0
        n = 0
        mark = len(out)
        if c.kind == "flow":
            self.counters.generic_sets += 1
        try:
            while end - pos >= max(c.min_length, 1):
                vals, pos = tpl.walk(buf, pos, end, c.fields)
                n += 1
                if c.options:
                    self._options_record(d, c, vals)
                elif c.kind == "flow":
                    self._flow_record(d, odid, c, vals, ex.name, export_time, out)
                else:
                    self._psamp_record(ex, d, odid, c, vals, export_time, out)
        except DecodeError:
            del out[mark:]
            raise
        return n

    def _may_generate(self, now: float) -> bool:
        """A token bucket: an exporter churning templates falls back to the generic walker
        (correct, ~20x slower) instead of spending a core on code generation."""
        rate = self.limits.generate_rate
        self._tokens = min(10 * rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _flow_record(self, d: Domain, odid: int, c: tpl.Compiled, vals: List[memoryview], exporter: str,
                     export_time: float, out: List[FlowRecord]) -> None:
        """The generic twin of a generated decoder (same roles, same results)."""
        v = tpl.values(c.fields, vals)

        def num(*ies: int) -> Optional[int]:
            for ie in ies:
                x = v.get(ie)
                if x is not None and len(x) <= 8:
                    return tpl.as_int(x)
            return None

        def addr(ie: int, n: int) -> Optional[bytes]:
            x = v.get(ie)
            return bytes(x) if x is not None and len(x) == n else None

        src6, dst6, src4, dst4 = addr(27, 16), addr(28, 16), addr(8, 4), addr(12, 4)
        fam = 6 if src6 is not None or dst6 is not None else 4
        if src6 is not None and src4 is not None:
            ver = num(tpl.IE_IP_VERSION)
            fam = 4 if ver == 4 or (ver is None and src6 == bytes(16)) else 6
        if fam == 6:
            src, dst = src6 or bytes(16), dst6 or bytes(16)
        else:
            src, dst = src4 or bytes(4), dst4 or bytes(4)
        label = num(tpl.IE_LABEL)
        row = self.matcher.rows[label & 0x3FEFC] if label is not None else (None, None, "")
        if label is not None:
            label &= 0xFFFFF
        rate = num(tpl.IE_SAMPLING_INTERVAL, tpl.IE_SAMPLER_RANDOM_INTERVAL)
        if not rate:
            pi, ps = num(tpl.IE_SAMPLING_PACKET_INTERVAL), num(tpl.IE_SAMPLING_PACKET_SPACE)
            if pi and ps is not None:
                rate = max(1, round((pi + ps) / pi))
            else:
                sel = num(tpl.IE_SELECTOR_ID, tpl.IE_SAMPLER_ID)
                rate = d.selector_rates.get(sel, d.rate) if sel is not None else d.rate
        out.append(FlowRecord(exporter, odid, num(tpl.IE_INGRESS), num(tpl.IE_EGRESS), num(tpl.IE_DIRECTION),
                              num(tpl.IE_PROTO) or 0, fam, src, dst, num(tpl.IE_SPORT) or 0, num(tpl.IE_DPORT) or 0,
                              label, row[0], row[1], (num(*tpl.INT_ROLES["octets"]) or 0) * rate,
                              (num(*tpl.INT_ROLES["packets"]) or 0) * rate, export_time, row[2]))

    def _hold(self, ex: Exporter, d: Domain, tid: int, body: bytes, export_time: float, now: float) -> None:
        lim = self.limits
        self._expire_held(ex, d, now)
        if (ex.held_sets >= lim.max_held_sets or ex.held_bytes + len(body) > lim.max_held_bytes
                or self.total_held_bytes + len(body) > lim.max_total_held_bytes):
            self.counters.undecodable_sets += 1
            self.rejects.add(ex.name, "no_template", f"data set for unknown template {tid}; hold buffer full")
            return
        d.held.append(Held(tid, body, export_time, now))
        ex.held_sets += 1
        ex.held_bytes += len(body)
        self.total_held_bytes += len(body)
        self.counters.held_sets += 1

    def _options_record(self, d: Domain, c: tpl.Compiled, vals: List[memoryview]) -> None:
        self.counters.options_records += 1
        v = tpl.values(c.fields, vals)
        rate = 0
        if tpl.IE_SAMPLING_INTERVAL in v:
            rate = tpl.as_int(v[tpl.IE_SAMPLING_INTERVAL])
        elif tpl.IE_SAMPLER_RANDOM_INTERVAL in v:
            rate = tpl.as_int(v[tpl.IE_SAMPLER_RANDOM_INTERVAL])
        elif tpl.IE_SAMPLING_PACKET_INTERVAL in v and tpl.IE_SAMPLING_PACKET_SPACE in v:
            pi = tpl.as_int(v[tpl.IE_SAMPLING_PACKET_INTERVAL])
            if pi:
                rate = round((pi + tpl.as_int(v[tpl.IE_SAMPLING_PACKET_SPACE])) / pi)
        elif tpl.IE_SAMPLING_SIZE in v and tpl.IE_SAMPLING_POPULATION in v:
            size = tpl.as_int(v[tpl.IE_SAMPLING_SIZE])
            if size:
                rate = round(tpl.as_int(v[tpl.IE_SAMPLING_POPULATION]) / size)
        if rate <= 0:
            return
        rate = min(rate, 1 << 30)
        sel = v.get(tpl.IE_SELECTOR_ID, v.get(tpl.IE_SAMPLER_ID))
        if sel is None:
            d.rate = rate
        else:
            key = tpl.as_int(sel)
            if key in d.selector_rates or len(d.selector_rates) < MAX_SELECTORS:
                d.selector_rates[key] = rate

    def _psamp_record(self, ex: Exporter, d: Domain, odid: int, c: tpl.Compiled, vals: List[memoryview],
                      export_time: float, out: List[FlowRecord]) -> None:
        v = tpl.values(c.fields, vals)
        pkt: Optional[Packet]
        try:
            if tpl.IE_DATALINK_SECTION in v:
                pkt = parse_ethernet(v[tpl.IE_DATALINK_SECTION])
            else:
                pkt = parse_ip(v[tpl.IE_IP_HEADER_SECTION])
        except PacketError:
            pkt = None
        if pkt is None:
            self.counters.not_ip += 1
            return
        # IP octets, as octetDeltaCount counts them
        if tpl.IE_IP_TOTAL_LENGTH in v:
            nbytes = tpl.as_int(v[tpl.IE_IP_TOTAL_LENGTH])
        elif tpl.IE_DATALINK_FRAME_SIZE in v:
            nbytes = max(tpl.as_int(v[tpl.IE_DATALINK_FRAME_SIZE]) - pkt.l2_length, 0)
        else:  # the IP header's own length: right also when the section was cut
            nbytes = pkt.ip_length
        rate = d.rate
        if tpl.IE_SAMPLING_PACKET_INTERVAL in v and tpl.IE_SAMPLING_PACKET_SPACE in v:
            pi = tpl.as_int(v[tpl.IE_SAMPLING_PACKET_INTERVAL])
            if pi:
                rate = round((pi + tpl.as_int(v[tpl.IE_SAMPLING_PACKET_SPACE])) / pi)
        elif tpl.IE_SELECTOR_ID in v:
            rate = d.selector_rates.get(tpl.as_int(v[tpl.IE_SELECTOR_ID]), rate)
        ingress = tpl.as_int(v[tpl.IE_INGRESS]) if tpl.IE_INGRESS in v else None
        egress = tpl.as_int(v[tpl.IE_EGRESS]) if tpl.IE_EGRESS in v else None
        direction = tpl.as_int(v[tpl.IE_DIRECTION]) if tpl.IE_DIRECTION in v else None
        out.append(packet_record(self.matcher, pkt, ex.name, odid, ingress, egress, direction, nbytes, 1,
                                 max(rate, 1), export_time))

    def check_sequence(self, ex: Exporter, d: Domain, seq: int, count: int) -> None:
        """Gaps are counted (lost records or datagrams), resets and reordering tolerated."""
        exp = d.seq_next
        if exp is not None and seq != exp:
            gap = (seq - exp) & 0xFFFFFFFF
            if gap < 1 << 20:
                self.counters.sequence_gaps += 1
                ex.lost += gap
        d.seq_next = (seq + count) & 0xFFFFFFFF

    def template_count(self) -> int:
        return sum(len(d.templates) for ex in self.exporters.values() for d in ex.domains.values())


def parse_template_fields(buf: memoryview, pos: int, end: int, count: int, tid: int,
                          enterprise_bit: bool) -> Tuple[List[tpl.Field], int]:
    """`count` field specifiers at pos; IPFIX's enterprise bit adds a 4-byte number."""
    if count > tpl.MAX_FIELDS:
        raise DecodeError("bad_template", f"template {tid}: field count {count}, expected <= {tpl.MAX_FIELDS}")
    if pos + 4 * count > end:
        raise DecodeError("template_overrun", f"template {tid}: {count} fields do not fit the {end - pos} bytes left")
    fields: List[tpl.Field] = []
    for i in range(count):
        if pos + 4 > end:
            raise DecodeError("template_overrun", f"template {tid} field {i} cut at the set end")
        ie, length = struct.unpack_from("!HH", buf, pos)
        pos += 4
        ent = 0
        if enterprise_bit and ie & 0x8000:
            if pos + 4 > end:
                raise DecodeError("template_overrun", f"template {tid} field {i} enterprise number cut at the set end")
            (ent,) = struct.unpack_from("!I", buf, pos)
            pos += 4
            ie &= 0x7FFF
            ent = ent or 0xFFFFFFFF  # enterprise 0 with the bit set: still not an IANA element
        fields.append(tpl.Field(ie, ent, length))
    return fields, pos
