# SPDX-License-Identifier: Apache-2.0
"""Flow-export decoding: records/s on one core, decode + aggregate, against a pure-Python reference.

Workloads, all built from the real captures in shared/data/flowexport:
  ipfix-ovs-mtu   OVS 3.1's templates (45-49 fields, variable-length interface names) and its
                  data records replicated into 1400-byte messages (what OVS sends: ~5 records)
  ipfix-ovs-64k   the same records packed into ~64 KB messages (bulk: per-message cost gone)
  ipfix-fixed     a router-like fixed-length IPv6 template (10 fields), 1400-byte messages
  sflow           OVS's flow samples (raw header, 128 bytes) packed 6 per datagram
Each run decodes every message and adds the records to the per-minute Aggregator, repeated for
about --seconds of CPU time (process_time: the cores are shared, preemption is not our cost);
the median of --runs is printed with the ratio to the reference: the `ipfix`
package from PyPI (pure Python, namedict per record) in a venv of its own (--ref-venv, made on
first use), decoding the same messages in the same run, pinned to the same CPU, and tshark's rate
(flow label field extraction, its start-up subtracted). Then the soak: a receiver process
(IpfixReceiver + Aggregator on --cpu, 64 MiB receive buffer) offered ipfix-ovs-mtu at 80% of the
rate just measured for --soak seconds by a sender on the other CPU: records decoded vs sent, and
the kernel's drop counter of the receiving socket.

  python bench/flowexport.py [--seconds 1] [--runs 5] [--cpu 1] [--soak 30] [--ref-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from scitagd.flowexport.aggregate import Aggregator  # noqa: E402
from scitagd.flowexport.ipfix import IpfixDecoder  # noqa: E402
from scitagd.flowexport.sflow import SflowDecoder  # noqa: E402
from scitagd.flowexport.tagging import TagMatcher  # noqa: E402
from scitagd.registry import Registry  # noqa: E402
from scitagd.tags import encode_flow_label  # noqa: E402

DATA = Path(os.environ.get("SCITAGD_SHARED", REPO.parent / "shared")) / "data" / "flowexport"
EXPORTER = "192.0.2.1"

REF_SCRIPT = r"""
import statistics, struct, sys, time
import ipfix.ie, ipfix.message
ipfix.ie.use_iana_default()
data = open(sys.argv[1], "rb").read()
msgs, i = [], 0
while i < len(data):
    (n,) = struct.unpack_from("!I", data, i); msgs.append(data[i + 4:i + 4 + n]); i += 4 + n
ntemplates, seconds, runs = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rates = []
for _ in range(runs):
    mb = ipfix.message.MessageBuffer()
    for m in msgs[:ntemplates]:
        mb.from_bytes(m)
        for _r in mb.namedict_iterator():
            pass
    acc, n, t0 = {}, 0, time.process_time()
    while time.process_time() - t0 < seconds:
        for m in msgs[ntemplates:]:
            mb.from_bytes(m)
            for r in mb.namedict_iterator():
                k = (r.get("flowLabelIPv6", 0) & 0x3FEFC, r.get("ingressInterface"), r.get("flowDirection"))
                acc[k] = acc.get(k, 0) + r.get("octetDeltaCount", 0)
                n += 1
    rates.append(n / (time.process_time() - t0))
print(statistics.median(rates))
"""


def udp_payloads(path: Path) -> List[bytes]:
    data = path.read_bytes()
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        eth = struct.unpack_from("!H", frame, 12)[0]
        l4 = 14 + (40 if eth == 0x86DD else (frame[14] & 15) * 4)
        out.append(frame[l4 + 8:])
    return out


def ipfix_msg(sets: bytes, seq: int, odid: int = 123) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(sets), 1_700_000_000, seq, odid) + sets


def ovs_workload(limit: int) -> Tuple[List[bytes], List[bytes], int]:
    """(template messages, data messages, records) from the OVS capture, records replicated."""
    msgs = udp_payloads(DATA / "ovs-ipfix.pcap")
    templates = [m for m in msgs if struct.unpack_from("!H", m, 16)[0] in (2, 3)]
    records: List[Tuple[int, bytes]] = []
    for m in msgs:
        sid, slen = struct.unpack_from("!HH", m, 16)
        if sid >= 256 and len(m) == 16 + slen and sid != 462:
            records.append((sid, m[20:20 + slen - 4]))
    out, seq, total = [], 0, 0
    for i in range(64):
        tid, rec = records[i % len(records)]
        k = max(1, (limit - 20) // len(rec))
        out.append(ipfix_msg(struct.pack("!HH", tid, 4 + k * len(rec)) + rec * k, seq))
        seq += k
        total += k
    return templates, out, total


def fixed_workload() -> Tuple[List[bytes], List[bytes], int]:
    spec = [(61, 1), (10, 4), (4, 1), (27, 16), (28, 16), (31, 4), (7, 2), (11, 2), (1, 8), (2, 8)]
    tmpl = struct.pack("!HH", 400, len(spec)) + b"".join(struct.pack("!HH", *f) for f in spec)
    templates = [ipfix_msg(struct.pack("!HH", 2, 4 + len(tmpl)) + tmpl, 0)]
    src, dst = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002")
    out, seq, total = [], 0, 0
    for i in range(64):
        recs = b""
        for j in range(24):  # 58-byte records: 24 per 1400-byte message
            n = i * 24 + j
            label = encode_flow_label(2 + n % 3, n % 20, n % 32) if n % 4 else (n * 7919) & 0xFFFFF
            recs += struct.pack("!BIB16s16sIHHQQ", n % 2, 1 + n % 8, 6, src, dst, label, 40000 + n % 1000, 443,
                                1000 + n, 1 + n % 10)
        out.append(ipfix_msg(struct.pack("!HH", 400, 4 + len(recs)) + recs, seq))
        seq += 24
        total += 24
    return templates, out, total


def sflow_workload() -> Tuple[List[bytes], int]:
    samples: List[bytes] = []
    for m in udp_payloads(DATA / "ovs-sflow.pcap"):
        off = 28  # IPv4 agent
        (n,) = struct.unpack_from("!I", m, 24)
        for _ in range(n):
            fmt, ln = struct.unpack_from("!II", m, off)
            if fmt == 1:
                samples.append(m[off:off + 8 + ln])
            off += 8 + ln
    out = []
    for i in range(64):
        chunk = [samples[(i * 6 + j) % len(samples)] for j in range(6)]
        out.append(struct.pack("!IIIIIII", 5, 1, 0x7F000001, 0, i, 1000, 6) + b"".join(chunk))
    return out, 64 * 6


def measure(fn: Callable[[], int], seconds: float, runs: int) -> float:
    """Records per CPU second of this process (process_time): other sessions' load on the shared
    cores preempts us but does not count against the rate."""
    rates = []
    for _ in range(runs):
        n, t0 = 0, time.process_time()
        while time.process_time() - t0 < seconds:
            n += fn()
        rates.append(n / (time.process_time() - t0))
    return statistics.median(rates)


def ours_ipfix(templates: List[bytes], data: List[bytes], matcher: TagMatcher) -> Callable[[], int]:
    dec = IpfixDecoder(matcher)
    agg = Aggregator(lambda rows: None)
    for m in templates:
        dec.decode(m, EXPORTER, 1000.0)
    assert dec.rejects.counts == {}, dec.rejects.counts

    def run() -> int:
        n = 0
        for m in data:
            recs = dec.decode(m, EXPORTER, 1001.0)
            agg.add(recs)
            n += len(recs)
        return n

    return run


def ours_sflow(data: List[bytes], matcher: TagMatcher) -> Callable[[], int]:
    dec = SflowDecoder(matcher)
    agg = Aggregator(lambda rows: None)

    def run() -> int:
        n = 0
        for m in data:
            recs = dec.decode(m, EXPORTER, 1001.0)
            agg.add(recs)
            n += len(recs)
        return n

    return run


def reference(venv: Path, templates: List[bytes], data: List[bytes], seconds: float, runs: int,
              cpu: int) -> float | None:
    py = venv / "bin" / "python"
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
        r2 = subprocess.run([str(py), "-m", "pip", "install", "-q", "ipfix==0.9.7"], capture_output=True, text=True)
        if r.returncode or r2.returncode:
            print(f"reference: cannot make {venv} with the ipfix package: {r2.stderr.strip()[-200:]}")
            return None
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        for m in templates + data:
            f.write(struct.pack("!I", len(m)) + m)
    try:
        r = subprocess.run(["taskset", "-c", str(cpu), str(py), "-c", REF_SCRIPT, f.name, str(len(templates)),
                            str(seconds), str(runs)], capture_output=True, text=True, timeout=600)
    finally:
        os.unlink(f.name)
    if r.returncode:
        print(f"reference failed: {r.stderr.strip()[-300:]}")
        return None
    return float(r.stdout.strip().splitlines()[-1])


def write_pcap(path: Path, payloads: List[bytes], dport: int) -> None:
    """Ethernet/IPv4/UDP frames (checksums 0) around the payloads, for tshark."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, p in enumerate(payloads):
            udp = struct.pack("!HHHH", 40000, dport, 8 + len(p), 0) + p
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
            frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
            f.write(struct.pack("<IIII", i // 1000, i % 1000, len(frame), len(frame)) + frame)


def tshark_rate(payloads: List[bytes], per_payload: int, dport: int, decode_as: str, field: str,
                cpu: int, repeat: int = 3000) -> float | None:
    """Records (or samples) per second of tshark extracting the flow label field, startup excluded."""
    if not shutil.which("tshark"):
        return None
    with tempfile.TemporaryDirectory() as d:
        big, small = Path(d) / "big.pcap", Path(d) / "small.pcap"
        write_pcap(big, (payloads * (repeat // len(payloads) + 1))[:repeat], dport)
        write_pcap(small, payloads[:1], dport)
        times = {}
        for name, f in (("small", small), ("big", big)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run(["taskset", "-c", str(cpu), "tshark", "-n", "-r", str(f), "-d", f"udp.port=={dport},{decode_as}",
                                "-T", "fields", "-e", field], capture_output=True, text=True, timeout=600)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time, as for ours
            times[name] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            if r.returncode:
                return None
        spent = times["big"] - times["small"]
        if spent < 0.5:  # too short against tshark's startup to mean anything
            return None
        return repeat * per_payload / spent


def tshark_rate_ipfix(templates: List[bytes], data: List[bytes], records: int, cpu: int) -> float | None:
    reps = max(1, 20000 // len(data))
    payloads = templates + data * reps
    rate = tshark_rate(payloads, 1, 4739, "cflow", "cflow.ipv6flowlabel", cpu, repeat=len(payloads))
    if rate is None:
        return None
    # tshark_rate counted datagrams: convert to records (templates are few)
    return rate * (records * reps) / len(payloads)


def receiver_main(port: int) -> None:
    """The soak's receiver process: IpfixReceiver + Aggregator; totals as JSON on SIGTERM."""
    import asyncio
    import signal

    import msgspec

    from scitagd.flowexport.conf import IpfixConfig
    from scitagd.flowexport.receiver import IpfixReceiver, matcher_for

    async def run() -> None:
        conf = msgspec.convert({"bindAddresses": ["127.0.0.1"], "port": port, "receiveBuffer": 64 << 20},
                               IpfixConfig)
        agg = Aggregator(lambda rows: None)
        count = [0]

        def on_records(recs: List[Any]) -> None:
            count[0] += len(recs)
            agg.add(recs)

        rx = IpfixReceiver(conf, matcher_for(conf), on_records)
        await rx.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"records": count[0], "datagrams": rx.datagrams, "kernel_drops": rx.drops(),
                          "cpu_seconds": round(cpu.ru_utime + cpu.ru_stime, 1),
                          "rejects": rx.decoder.rejects.total(),
                          "rcvbuf": rx.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}), flush=True)
        await rx.stop()

    try:
        import uvloop  # as the collector runs

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


def soak(rate: float, seconds: float, cpu_rx: int, cpu_tx: int) -> Dict[str, Any]:
    """Offer OVS-template IPFIX (1400-byte messages) at `rate` records/s for `seconds` to a
    receiver process; count what it decoded and what the kernel dropped."""
    templates, data, records = ovs_workload(1400)
    per_msg = records / len(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rx = subprocess.Popen(["taskset", "-c", str(cpu_rx), sys.executable, __file__, "--receiver", str(port)],
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {cpu_tx})
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect(("127.0.0.1", port))
        for m in templates:
            tx.send(m)
        counts = [_records_in(m) for m in data]
        sent_records = sent = 0
        msg_rate = rate / per_msg
        seq = 0
        t0 = time.perf_counter()
        while True:
            el = time.perf_counter() - t0
            if el >= seconds:
                break
            due = int(el * msg_rate) - sent
            if due <= 0:
                time.sleep(0.0005)
                continue
            for _ in range(min(due, 200)):
                i = sent % len(data)
                tx.send(data[i][:8] + struct.pack("!I", seq) + data[i][12:])  # sequence numbers in order
                seq = (seq + counts[i]) & 0xFFFFFFFF
                sent_records += counts[i]
                sent += 1
        # let the receiver drain its socket (it may lag behind; what the kernel dropped is gone)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _rx_queue(port) > 0:
            time.sleep(0.2)
        time.sleep(0.5)
        rx.send_signal(15)
        out, _ = rx.communicate(timeout=30)
        got = json.loads(out.strip().splitlines()[-1])
        got.update({"offered_records_per_s": round(rate), "sent_records": sent_records, "seconds": seconds,
                    "lost_records": sent_records - got["records"]})
        return got
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


def _rx_queue(port: int) -> int:
    """Bytes waiting in the receive queue of the UDP socket bound to `port` (/proc/net/udp)."""
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if int(cols[1].split(":")[1], 16) == port:
                return int(cols[4].split(":")[1], 16)
    return 0


_COUNTER: List[IpfixDecoder] = []


def _records_in(m: bytes) -> int:
    if not _COUNTER:
        _COUNTER.append(IpfixDecoder(TagMatcher(any_experiment=True)))
        for t in ovs_workload(1400)[0]:
            _COUNTER[0].decode(t, EXPORTER, 1.0)
    return len(_COUNTER[0].decode(m, EXPORTER, 1.0))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        receiver_main(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--ref-venv", type=Path, default=Path(tempfile.gettempdir()) / "scitagd-bench-ipfix-venv")
    ap.add_argument("--soak", type=float, default=30.0, help="seconds at 80%% of the ipfix-ovs-mtu rate (0: skip)")
    ap.add_argument("--soak-only", type=float, default=0, help="just the soak, at this many records/s")
    args = ap.parse_args()
    if args.soak_only:
        print(json.dumps(soak(args.soak_only, args.soak, args.cpu, 1 - args.cpu if args.cpu in (0, 1) else 0)))
        return
    os.sched_setaffinity(0, {args.cpu})
    matcher = TagMatcher.from_registry(Registry.bundled())
    results: Dict[str, Dict[str, float | None]] = {}
    for name, (templates, data, records) in {
        "ipfix-ovs-mtu": ovs_workload(1400),
        "ipfix-ovs-64k": ovs_workload(65000),
        "ipfix-fixed": fixed_workload(),
    }.items():
        ours = measure(ours_ipfix(templates, data, matcher), args.seconds, args.runs)
        ref = reference(args.ref_venv, templates, data, args.seconds, args.runs, args.cpu)
        ts = None
        if name != "ipfix-ovs-64k":  # IPFIX over UDP: tshark reads datagrams up to the MTU here
            ts = tshark_rate_ipfix(templates, data, records, args.cpu)
        results[name] = {"records_per_s": round(ours), "reference_per_s": round(ref) if ref else None,
                         "ratio": round(ours / ref, 1) if ref else None,
                         "tshark_per_s": round(ts) if ts else None}
        print(f"{name:15s} {ours:12,.0f} records/s   ipfix package {ref or 0:9,.0f}/s (x{ours / ref if ref else 0:.1f})"
              f"   tshark {ts or 0:9,.0f}/s (x{ours / ts if ts else 0:.1f})", flush=True)
    sflow, samples = sflow_workload()
    rate = measure(ours_sflow(sflow, matcher), args.seconds, args.runs)
    ts = tshark_rate(sflow, samples // len(sflow), 6343, "sflow", "ipv6.flow", args.cpu, repeat=10000)
    results["sflow"] = {"samples_per_s": round(rate), "tshark_per_s": round(ts) if ts else None}
    print(f"{'sflow':15s} {rate:12,.0f} samples/s   tshark {ts or 0:9,.0f}/s (x{rate / ts if ts else 0:.1f})")
    if args.soak:
        target = 0.8 * float(results["ipfix-ovs-mtu"]["records_per_s"] or 0)
        r = soak(target, args.soak, args.cpu, 1 - args.cpu if args.cpu in (0, 1) else 0)
        results["soak"] = r
        print(f"soak            {r['offered_records_per_s']:,} records/s offered for {r['seconds']:.0f} s: "
              f"{r['records']:,} of {r['sent_records']:,} decoded, lost {r['lost_records']}, kernel drops "
              f"{r['kernel_drops']}, receive buffer {r['rcvbuf']:,} bytes, receiver CPU {r['cpu_seconds']} s "
              f"({r['records'] / max(r['cpu_seconds'], 0.1):,.0f} records per receiver CPU second)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
