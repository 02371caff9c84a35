# SPDX-License-Identifier: Apache-2.0
"""`scitagd stun sample`: what `backends.firefly.stun` would find, step by step, as flowd-go's
`stun sample` shows it: the addresses looked at, then for each private one every HTTP echo and
STUN server asked, and what each answered. Exit status 0 when every private address got a
public one, 1 otherwise.

The servers are `--stun-server` / `--http-server` (repeatable), else a config's
`backends.firefly.stun` (`--config`), else flowd-go's defaults, which are public servers: the
command says so before it asks them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any, Dict, List

from .errors import CommandError, InputError

__all__ = ["sample"]


def sample(a: argparse.Namespace) -> int:
    from .netutil import parse_hostport
    from .sinks.conf import StunConfig
    from .sinks.publicaddr import default_route_sources, mappable

    conf = StunConfig()
    marker_ifaces: List[str] = []
    if a.config:
        from .config import load

        c = load(a.config)
        if c.backends.firefly is not None and c.backends.firefly.stun is not None:
            conf = c.backends.firefly.stun
        if c.backends.marker is not None:
            marker_ifaces = list(c.backends.marker.target_interfaces)
    stun = list(a.stun_server) if a.stun_server is not None else list(conf.stun_servers)
    http = list(a.http_server) if a.http_server is not None else list(conf.http_servers)
    timeout = a.timeout if a.timeout is not None else conf.timeout
    try:
        servers = [parse_hostport("--stun-server", s, 3478) for s in stun]
    except ValueError as e:
        raise CommandError(str(e)) from None
    for url in http:
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"--http-server {url!r}: expected an http:// or https:// URL")
    out: Dict[str, Any] = {"addresses": [], "interfaces": {}}
    say = (lambda *_: None) if a.json else print
    from .addresses import interface_addresses

    names = {i: n for i, n in socket.if_nameindex()}
    by_index: Dict[int, List[str]] = {}
    for idx, addr in interface_addresses():
        by_index.setdefault(idx, []).append(addr)
    routes = default_route_sources()
    wanted = set(a.interface or []) | set(conf.interfaces) | set(marker_ifaces)
    addrs: List[str] = []
    for src in routes:
        where = next((i for i, lst in by_index.items() if src in lst), None)
        name = names.get(where, "?") if where is not None else "?"
        say(f"default {'IPv6' if ':' in src else 'IPv4'} route: source {src} on {name}")
        wanted.add(name)
    if not routes:
        say("no default route (neither IPv4 nor IPv6)")
    for idx, lst in sorted(by_index.items()):
        name = names.get(idx, str(idx))
        if name not in wanted:
            continue
        shown = []
        for addr in lst:
            note = "" if mappable(addr) else " (not mapped: loopback, link-local or public)"
            shown.append(addr + note)
            if mappable(addr) and addr not in addrs:
                addrs.append(addr)
        out["interfaces"][name] = lst
        say(f"interface {name} (index {idx}): {', '.join(shown) or 'no addresses'}")
    for addr in routes:
        if mappable(addr) and addr not in addrs:
            addrs.append(addr)
    public = [s for s in stun if not _is_local_server(s)] + [u for u in http if not _is_local_server(u)]
    if addrs and public and not a.json:
        say(f"asking servers on the Internet: {', '.join(public)}")
    ok = True
    for addr in addrs:
        result = asyncio.run(_resolve(addr, conf.manual_mapping, http, servers, timeout, say))
        out["addresses"].append(result)
        ok = ok and result["public"] is not None
    if not addrs:
        say("no private addresses: nothing to map")
    if a.json:
        print(json.dumps(out))
    return 0 if ok else 1


def _is_local_server(text: str) -> bool:
    host = text.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    try:
        import ipaddress

        ip = ipaddress.ip_address(host)
        return not ip.is_global
    except ValueError:
        return host in ("localhost",)


async def _resolve(addr: str, manual: Dict[str, str], http: List[str], servers: List[Any], timeout: float,
                   say: Any) -> Dict[str, Any]:
    from .stun import hostport, http_echo, other_family, stun_query

    steps: List[Dict[str, Any]] = []
    res: Dict[str, Any] = {"address": addr, "public": None, "via": None, "steps": steps}
    if addr in manual:
        say(f"{addr}: manualMapping: {manual[addr]}")
        res.update(public=manual[addr], via="manual")
        return res
    loop = asyncio.get_running_loop()
    for url in http:
        if other_family(url, addr):
            continue
        try:
            pub = await loop.run_in_executor(None, http_echo, url, addr, timeout)
        except (OSError, InputError, ValueError) as e:
            say(f"{addr}: http {url}: failed: {e}")
            steps.append({"server": url, "error": str(e)})
            continue
        say(f"{addr}: http {url}: {pub}")
        steps.append({"server": url, "public": pub})
        if res["public"] is None:
            res.update(public=pub, via=f"http {url}")
    for host, port in servers:
        if other_family(host, addr):
            continue
        where = hostport(host, port)
        try:
            pub, pport = await stun_query((host, port), addr, timeout)
        except (OSError, InputError, ValueError) as e:
            say(f"{addr}: stun {where}: failed: {e}")
            steps.append({"server": where, "error": str(e)})
            continue
        say(f"{addr}: stun {where}: {pub} port {pport}")
        steps.append({"server": where, "public": pub, "port": pport})
        if res["public"] is None:
            res.update(public=pub, via=f"stun {where}")
    say(f"{addr}: public address {res['public'] or 'not found'}" + (f" ({res['via']})" if res["via"] else ""))
    return res
