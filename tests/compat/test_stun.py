# SPDX-License-Identifier: Apache-2.0
"""`backends.firefly.stun`: the STUN client against RFC 5769's vectors and hostile answers, and the
whole thing for real behind an nftables NAT (tests/compat/natlab.py) against coturn and an HTTP
echo: fireflies carry the public addresses, the marker keeps matching the private ones, a new
address is discovered without waiting for the refresh, the start never waits for discovery."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scitagd.errors import InputError
from scitagd.lab.netlab import TOOLS
from scitagd.sinks.conf import StunConfig
from scitagd.sinks.publicaddr import PublicAddresses, mappable
from scitagd.stun import (
    MAGIC_COOKIE,
    binding_request,
    other_family,
    parse_binding_response,
    parse_echo,
)

from .natlab import H4, H4B, H6, PUB4, PUB4B, PUB6, S4, S6, NatLab

# RFC 5769 section 2.1's transaction id, and the XOR-MAPPED-ADDRESS values of its sections 2.2
# (192.0.2.1 port 32853) and 2.3 (2001:db8:1234:5678:11:2233:4455:6677 port 32853).
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
XOR4 = bytes.fromhex("0001a147e112a643")
XOR6 = bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def response(*attrs: bytes, mtype: int = 0x0101, txid: bytes = TXID, cookie: int = MAGIC_COOKIE,
             length: int | None = None) -> bytes:
    body = b"".join(attrs)
    return struct.pack("!HHI12s", mtype, len(body) if length is None else length, cookie, txid) + body


def attr(atype: int, value: bytes) -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + b"\0" * (-len(value) % 4)


# --- the protocol ----------------------------------------------------------------------------

def test_rfc5769_vectors() -> None:
    sw = attr(0x8022, b"test vector ")
    assert parse_binding_response(response(sw, attr(0x0020, XOR4)), TXID) == ("192.0.2.1", 32853)
    assert parse_binding_response(response(sw, attr(0x0020, XOR6)), TXID) == (
        "2001:db8:1234:5678:11:2233:4455:6677", 32853)
    # RFC 3489 servers: MAPPED-ADDRESS in the clear; the old 0x8020 XOR form
    plain = bytes.fromhex("0001") + struct.pack("!H", 40000) + bytes([198, 51, 100, 7])
    assert parse_binding_response(response(attr(0x0001, plain)), TXID) == ("198.51.100.7", 40000)
    assert parse_binding_response(response(attr(0x8020, XOR4)), TXID) == ("192.0.2.1", 32853)
    # XOR-MAPPED wins over MAPPED, whatever the order
    assert parse_binding_response(response(attr(0x0001, plain), attr(0x0020, XOR4)), TXID)[0] == "192.0.2.1"


def test_binding_request_is_well_formed() -> None:
    msg, txid = binding_request(TXID)
    mtype, length, cookie, tid = struct.unpack_from("!HHI12s", msg)
    assert (mtype, cookie, tid, txid) == (0x0001, MAGIC_COOKIE, TXID, TXID)
    assert length == len(msg) - 20 and length % 4 == 0
    assert msg[-8:-4] == bytes.fromhex("80280004")
    assert struct.unpack("!I", msg[-4:])[0] == (zlib.crc32(msg[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    assert binding_request()[1] != binding_request()[1]


@pytest.mark.parametrize("data,reason,needle", [
    (b"\x01\x01\x00", "short", "shorter than the 20-byte header"),
    (response(attr(0x20, XOR4), txid=b"x" * 12), "wrong_txid", "another request"),
    (response(attr(0x20, XOR4), cookie=0x12345678), "wrong_txid", "magic cookie"),
    (response(attr(0x20, XOR4), mtype=0x8101), "not_stun", "first two bits"),
    (response(attr(0x20, XOR4), length=6), "bad_length", "multiple of 4"),
    (response(attr(0x20, XOR4), length=400), "bad_length", "within the"),
    (response(struct.pack("!HH", 0x20, 200) + b"\0" * 8), "bad_length", "runs past the message"),
    (response(attr(0x20, bytes.fromhex("0003a147e112a643"))), "bad_address", "family 3"),
    (response(attr(0x20, bytes.fromhex("0002a147e112a643"))), "bad_address", "family 2 in 8 bytes"),
    (response(attr(0x20, b"\0\1")), "bad_address", "too short"),
    (response(attr(0x8022, b"x")), "no_address", "without a (XOR-)MAPPED-ADDRESS"),
    (response(attr(0x0009, b"\0\0\x04\x14Bad Request"), mtype=0x0111), "stun_error", "error 420 'Bad Request'"),
    (response(mtype=0x0002), "bad_type", "0x0002"),
])
def test_bad_answers_are_named(data: bytes, reason: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        parse_binding_response(data, TXID)
    assert e.value.reason == reason and needle in str(e.value), str(e.value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_any_bytes_give_an_address_or_an_input_error(junk: bytes, with_header: bool) -> None:
    data = response(length=len(junk) & ~3) + junk if with_header else junk
    try:
        host, port = parse_binding_response(data, TXID)
    except InputError:
        return
    assert 0 <= port <= 65535 and host


def test_echo_answers() -> None:
    assert parse_echo(b'{"ip":"203.0.113.9"}') == "203.0.113.9"
    assert parse_echo(b'{"ip": "2001:db8::9", "country": "x"}\n') == "2001:db8::9"
    assert parse_echo(b"198.51.100.1\n") == "198.51.100.1"
    for bad, needle in ((b"<html>", "not an IP address"), (b'{"ip": 5}', "no \"ip\" string"),
                        (b'{"ip"', "not JSON"), (b"[1]", "not an IP address")):
        with pytest.raises(InputError, match=needle):
            parse_echo(bad)


def test_family_of_servers() -> None:
    assert other_family("2001:db8::1", "10.0.0.1") and other_family("http://[2001:db8::1]:80/", "10.0.0.1")
    assert not other_family("stun.example.org", "10.0.0.1") and not other_family("https://h.example/x", "fd00::1")
    assert other_family("http://192.0.2.1/", "fd00::1")


def test_config_checks_and_mapping() -> None:
    for bad, needle in (({"manualMapping": {"10.0.0.1": "2001:db8::1"}}, "same family"),
                        ({"manualMapping": {"x": "10.0.0.1"}}, "expected an IP address"),
                        ({"stunServers": ["2001:db8::1:3478"]}, "brackets"),
                        ({"httpServers": ["ftp://x"]}, "http:// or https://"),
                        ({"refreshInterval": 1}, "refreshInterval 1")):
        import msgspec

        with pytest.raises(msgspec.ValidationError, match=needle):
            msgspec.convert(bad, StunConfig)
    conf = StunConfig(manual_mapping={"10.0.0.5": "203.0.113.50", "0.0.0.0": "203.0.113.99"}, stun_servers=[],
                      http_servers=[])
    pa = PublicAddresses(conf, list)
    local = {"10.0.0.5", "10.0.0.6", "127.0.0.1"}.__contains__
    assert pa.public("10.0.0.5", local) == "203.0.113.50"
    assert pa.public("10.0.0.6", local) == "203.0.113.99"  # any other address of this host
    assert pa.public("10.9.9.9", local) is None  # not ours
    assert pa.public("127.0.0.1", local) is None
    assert pa.public("fd00::1", local) is None
    assert [mappable(a) for a in ("10.0.0.1", "fd00::1", "fe80::1", "127.0.0.1", "8.8.8.8", "ff02::1")] == [
        True, True, False, False, False, False]


# --- behind a real NAT ---------------------------------------------------------------------

@pytest.fixture
def nat(tmp_path: Path) -> Iterator[NatLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables)")
    lab = NatLab(tmp_path)
    try:
        lab.coturn()
        lab.http_echo()
        yield lab
    finally:
        lab.close()


class Daemon:
    def __init__(self, lab: NatLab, stun: str, extra: str = "", marker: str = "") -> None:
        # the defaults are flowd-go's public servers: every test names its own, on the lab's S
        assert "stunServers" in stun and "httpServers" in stun
        self.lab = lab
        self.pipe = lab.tmp / f"np-{len(lab.procs)}"
        self.log = lab.tmp / f"scitagd-{len(lab.procs)}.log"
        conf = lab.tmp / f"scitagd-{len(lab.procs)}.yaml"
        conf.write_text(f"""
plugins:
  namedPipe: {{pipePath: {self.pipe}}}
backends:
  firefly:
    prependSyslog: false
    collectors: ["{S4}:10600"]
    stun: {stun}
{marker}
{extra}
""")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.h.name}", sys.executable, "-m", "scitagd",
                                      "run", "--config", str(conf)], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        lab.procs.append(self.proc)
        self.started = self.wait("scitagd.daemon started") - self.t0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, needle: str, timeout: float = 15) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"scitagd exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in log:\n{self.text()}")

    def send(self, *lines: str) -> None:
        with open(self.pipe, "w") as f:
            for line in lines:
                f.write(line + "\n")


def flows(docs: List[Any]) -> dict:
    return {(d["flow-id"]["src-port"], d["flow-lifecycle"]["state"]): d["flow-id"] for d in docs}


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("method", ["stun", "http"])
def test_fireflies_carry_the_public_addresses(nat: NatLab, method: str) -> None:
    servers = (f'{{stunServers: ["{S4}:3478", "[{S6}]:3478"], httpServers: [], checkInterval: 0.3}}'
               if method == "stun" else
               f'{{stunServers: [], httpServers: ["http://{S4}:8080/", "http://[{S6}]:8080/"], checkInterval: 0.3}}')
    d = Daemon(nat, servers)
    via = "stun" if method == "stun" else "http"
    d.wait(f"public address found address={H4} public={PUB4} via={via}")
    d.wait(f"public address found address={H6} public={PUB6} via={via}")
    rcv = nat.receiver(S4, 10600, 6)
    d.send(f"start tcp {H4} 40001 {S4} 1094 2 16",       # a GET from this host: it is src
           f"start tcp {S4} 1094 {H4} 40002 2 16",       # a PUT to this host: it is dst
           f"start tcp {H6} 40003 {S6} 1094 3 14")
    got = flows(nat.received(rcv))
    assert got[(40001, "start")]["src-ip"] == PUB4 and got[(40001, "start")]["dst-ip"] == S4
    assert got[(1094, "start")]["dst-ip"] == PUB4 and got[(1094, "start")]["src-ip"] == S4
    assert got[(40003, "start")]["src-ip"] == PUB6 and got[(40003, "start")]["afi"] == "ipv6"
    assert "Traceback" not in d.text()


@pytest.mark.root
@pytest.mark.slow
def test_a_new_address_is_discovered_without_waiting_for_the_refresh(nat: NatLab) -> None:
    d = Daemon(nat, f'{{stunServers: ["{S4}:3478"], httpServers: [], checkInterval: 0.3, refreshInterval: 3600}}')
    d.wait(f"public address found address={H4} public={PUB4}")
    nat.h.exec("ip", "addr", "add", f"{H4B}/24", "dev", "h0")
    t = time.monotonic()
    d.wait(f"public address found address={H4B} public={PUB4B}", timeout=10)
    assert time.monotonic() - t < 5
    rcv = nat.receiver(S4, 10600, 1)
    d.send(f"start tcp {H4B} 40010 {S4} 1094 2 16")
    assert nat.received(rcv)[0]["flow-id"]["src-ip"] == PUB4B
    nat.h.exec("ip", "addr", "del", f"{H4B}/24", "dev", "h0")
    d.wait(f"address gone, its mapping dropped address={H4B}")


@pytest.mark.root
@pytest.mark.slow
def test_start_does_not_wait_for_discovery(nat: NatLab) -> None:
    """A server that never answers (an address nobody holds): the daemon is up at once, fireflies
    leave with the private address until one is found, and the failure is one warning."""
    d = Daemon(nat, '{stunServers: ["203.0.113.99:3478"], httpServers: [], timeout: 2}')
    assert d.started < 1.5 + 2, f"start took {d.started:.2f}s"
    assert "public address found" not in d.text()
    rcv = nat.receiver(S4, 10600, 1)
    d.send(f"start tcp {H4} 40020 {S4} 1094 2 16")
    assert nat.received(rcv)[0]["flow-id"]["src-ip"] == H4
    d.wait(f"public address not found address={H4} kept=none")


@pytest.mark.root
@pytest.mark.slow
def test_marker_keeps_the_private_key(nat: NatLab) -> None:
    """Only the fireflies change: the marker still finds the flow by its own (private) addresses,
    and the packets leave H marked."""
    pin = f"/sys/fs/bpf/scitagd-nat-{os.getpid()}"
    marker = f"  marker: {{targetInterfaces: [h0], pinPath: {pin}, checkInterval: 0.5}}"
    try:
        d = Daemon(nat, f'{{stunServers: ["[{S6}]:3478"], httpServers: [], checkInterval: 0.3}}', marker=marker)
        d.wait("attached interface=h0")
        d.wait(f"public address found address={H6} public={PUB6}")
        cap_file = nat.tmp / "r0.cap"
        cap = nat.start(nat.r, [*TOOLS, "capture", "r0", str(cap_file)])
        deadline = time.monotonic() + 10
        while not (cap_file.exists() and cap_file.stat().st_size >= 6) and time.monotonic() < deadline:
            time.sleep(0.02)
        srv = nat.start(nat.s, [*TOOLS, "tcp-server", S6, "5001"])
        assert srv.stdout is not None and b"listening" in srv.stdout.readline()
        rcv = nat.receiver(S4, 10600, 1)
        d.send(f"start tcp {H6} 40030 {S6} 5001 3 14")
        assert nat.received(rcv)[0]["flow-id"]["src-ip"] == PUB6
        r = subprocess.run(nat.h.cmd(*TOOLS, "tcp-client", S6, "5001", "40030", "200000"), capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        srv.wait(10)
        time.sleep(0.2)
        cap.terminate()
        cap.wait(10)
        from scitagd.lab.tools import read_capture
        from scitagd.tags import decode_flow_label

        pkts = [p for p in read_capture(str(cap_file)) if p.src == H6 and p.sport == 40030 and p.l4_payload]
        assert pkts and {decode_flow_label(p.label) for p in pkts} == {(3, 14)}
    finally:
        subprocess.run(["rm", "-rf", pin], check=False)


@pytest.mark.root
@pytest.mark.slow
def test_stun_sample(nat: NatLab) -> None:
    r = subprocess.run(nat.h.cmd(sys.executable, "-m", "scitagd", "stun", "sample", "--stun-server", f"{S4}:3478",
                                 "--stun-server", f"[{S6}]:3478", "--http-server", f"http://{S4}:8080/",
                                 "--http-server", f"http://[{S6}]:8080/", "--timeout", "2"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"default IPv4 route: source {H4} on h0" in out and f"default IPv6 route: source {H6} on h0" in out
    assert f"{H4}: stun {S4}:3478: {PUB4} port " in out and f"{H4}: http http://{S4}:8080/: {PUB4}" in out
    assert f"{H6}: stun [{S6}]:3478: {PUB6} port " in out and f"{H6}: public address {PUB6}" in out
    assert "fe80::" in out and "(not mapped: loopback, link-local or public)" in out
    assert "asking servers on the Internet" not in out
    j = subprocess.run(nat.h.cmd(sys.executable, "-m", "scitagd", "stun", "sample", "--json", "--stun-server",
                                 f"{S4}:3478", "--http-server", "http://203.0.113.99:8080/", "--timeout", "1"),
                       capture_output=True, text=True, timeout=60)
    doc = json.loads(j.stdout)
    v4 = next(x for x in doc["addresses"] if x["address"] == H4)
    assert v4["public"] == PUB4 and v4["via"] == f"stun {S4}:3478"
    assert "error" in v4["steps"][0]
    # IPv6 has no server of its family here: not found, exit status 1
    assert j.returncode == 1 and next(x for x in doc["addresses"] if x["address"] == H6)["public"] is None
