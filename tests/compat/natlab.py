# SPDX-License-Identifier: Apache-2.0
"""A host behind NAT, in three network namespaces made here (and removed, whatever happens):

    H (scitagd)  h0 10.77.0.2/24  fd00:77::2/64  default routes via R
       |
    R (router)   r0 10.77.0.1/24  fd00:77::1/64   -- nftables masquerade out of r1 --
                 r1 203.0.113.1/24 (+ .3)  2001:db8:77::1/64 (+ ::3)
       |
    S (servers)  s0 203.0.113.2/24  2001:db8:77::2/64: coturn (STUN), an HTTP echo, receivers

10.77.0.3 and fd00:77::3, when added to h0, are translated to R's second addresses (.3, ::3), so
that each private address has a public address of its own. The "public" side uses documentation
prefixes and exists only inside these namespaces: nothing is sent anywhere else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from scitagd.lab.netlab import TOOLS, NetNS, sh
from scitagd.lab.util import stop_process

__all__ = ["H4", "H4B", "H6", "H6B", "PUB4", "PUB4B", "PUB6", "PUB6B", "S4", "S6", "NatLab"]

H4, H6 = "10.77.0.2", "fd00:77::2"
H4B, H6B = "10.77.0.3", "fd00:77::3"
PUB4, PUB6 = "203.0.113.1", "2001:db8:77::1"
PUB4B, PUB6B = "203.0.113.3", "2001:db8:77::3"
S4, S6 = "203.0.113.2", "2001:db8:77::2"

NFT = """
table ip scitagd_nat {
  chain post { type nat hook postrouting priority srcnat; policy accept;
    oifname "r1" ip saddr 10.77.0.3 snat to 203.0.113.3
    oifname "r1" masquerade
  }
}
table ip6 scitagd_nat6 {
  chain post { type nat hook postrouting priority srcnat; policy accept;
    oifname "r1" ip6 saddr fd00:77::3 snat to 2001:db8:77::3
    oifname "r1" masquerade
  }
}
"""


class NatLab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: List[subprocess.Popen[bytes]] = []
        self.ns: List[NetNS] = []
        try:
            self.h, self.r, self.s = (self._ns(t) for t in ("h", "r", "s"))
            sh("ip", "link", "add", "h0", "netns", self.h.name, "type", "veth", "peer", "name", "r0", "netns",
               self.r.name)
            sh("ip", "link", "add", "r1", "netns", self.r.name, "type", "veth", "peer", "name", "s0", "netns",
               self.s.name)
            for ns, dev, addrs in ((self.h, "h0", [f"{H4}/24", f"{H6}/64"]),
                                   (self.r, "r0", ["10.77.0.1/24", "fd00:77::1/64"]),
                                   (self.r, "r1", [f"{PUB4}/24", f"{PUB4B}/24", f"{PUB6}/64"]),
                                   (self.s, "s0", [f"{S4}/24", f"{S6}/64"])):
                ns.exec("ip", "link", "set", dev, "up")
                for a in addrs:
                    ns.exec("ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            # deprecated: never chosen as a source, so masquerade takes ::1 (snat still uses ::3)
            self.r.exec("ip", "addr", "add", f"{PUB6B}/64", "dev", "r1", "nodad", "preferred_lft", "0")
            self.h.exec("ip", "route", "add", "default", "via", "10.77.0.1")
            self.h.exec("ip", "-6", "route", "add", "default", "via", "fd00:77::1")
            self.r.exec("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
            nft = tmp / "nat.nft"
            nft.write_text(NFT)
            self.r.exec("nft", "-f", str(nft))
        except Exception:
            self.close()
            raise

    def _ns(self, tag: str) -> NetNS:
        ns = NetNS(tag)
        self.ns.append(ns)
        return ns

    def start(self, ns: NetNS, args: List[str], out: Optional[Path] = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(ns.cmd(*args), stdout=open(out, "wb") if out else subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def coturn(self) -> None:
        """coturn as a plain STUN server on S's addresses, port 3478 (no TURN, no auth, no files
        outside the test's directory)."""
        if not shutil.which("turnserver"):
            raise AssertionError("turnserver (Debian coturn) not installed: scripts/setup.sh --test installs it")
        log = self.tmp / "coturn.log"
        self.start(self.s, ["turnserver", "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
                            f"--listening-ip={S4}", f"--listening-ip={S6}", "--listening-port=3478",
                            f"--pidfile={self.tmp / 'coturn.pid'}", f"--log-file={log}", "--simple-log",
                            "--no-stdout-log"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.s.exec("ss", "-uln", check=False).stdout
            if f"{S4}:3478" in r and f"[{S6}]:3478" in r:
                return
            time.sleep(0.1)
        raise AssertionError("coturn did not start: " + (log.read_text() if log.exists() else ""))

    def http_echo(self, port: int = 8080) -> None:
        for addr in (S4, S6):
            p = self.start(self.s, [*TOOLS, "http-echo", addr, str(port)])
            assert p.stdout is not None and b"listening" in p.stdout.readline()

    def receiver(self, addr: str, port: int, count: int, timeout: float = 8) -> subprocess.Popen[bytes]:
        p = self.start(self.s, [*TOOLS, "udp-recv", addr, str(port), str(count), "--timeout", str(timeout)])
        assert p.stdout is not None and b"listening" in p.stdout.readline()
        return p

    @staticmethod
    def received(p: subprocess.Popen[bytes], timeout: float = 30) -> List[Dict[str, object]]:
        out, _ = p.communicate(timeout=timeout)
        raw = json.loads(out.decode().strip().splitlines()[-1])["datagrams"]
        return [json.loads(g[g.index("{"):]) for g in raw]

    def close(self) -> None:
        for p in self.procs:
            stop_process(p)
            if p.stdout:
                p.stdout.close()
        for ns in self.ns:
            ns.close()
