# SPDX-License-Identifier: Apache-2.0
"""`scitagd config migrate --from flowd-go|flowd FILE`: the scitagd YAML that does what a flowd-go
or python flowd configuration did, with a comment wherever scitagd behaves differently, printed
on stdout (and checked to load before it is printed).

flowd-go's YAML is mostly scitagd's already: keys that do nothing here are commented out with the
reason, flowd-go's defaults are written out where scitagd's differ (its pid file, its pipe path),
values flowd-go took and scitagd refuses (experiment 0, flowd-go's own eBPF objects) are commented
out with what to do.

python flowd's configuration is Python assignments (flowd exec()s it): it is parsed with `ast`
and only literal assignments are read (`KEY = 'value'`, numbers, tuples, booleans); anything
else is reported and never run.
"""

from __future__ import annotations

import ast
import datetime
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .errors import CommandError, ConfigError

__all__ = ["Doc", "from_flowd", "from_flowd_go", "migrate", "read_flowd"]

INTERNAL = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16", "::1/128",
            "fc00::/7", "fe80::/10"]
ALL_NETWORKS = ["0.0.0.0/0", "::/0"]


@dataclass
class Entry:
    value: Any
    comment: List[str] = field(default_factory=list)  # lines above the key
    off: Optional[str] = None  # commented out, with this reason


class Doc:
    """An ordered YAML mapping whose entries carry comments, some commented out."""

    def __init__(self) -> None:
        self.entries: Dict[str, Entry] = {}

    def set(self, path: str, value: Any, *comment: str) -> None:
        node = self._parent(path, create=True)
        key = path.rsplit(".", 1)[-1]
        old = node.entries.get(key)
        if old is not None and isinstance(old.value, Doc) and isinstance(value, dict) and not value:
            old.comment += list(comment)
            return
        node.entries[key] = Entry(Doc() if isinstance(value, dict) and not value else value,
                                  [*(old.comment if old else []), *comment])

    def off(self, path: str, value: Any, reason: str) -> None:
        node = self._parent(path, create=True)
        node.entries[path.rsplit(".", 1)[-1]] = Entry(value, [], reason)

    def note(self, path: str, *comment: str) -> None:
        node = self._parent(path, create=True)
        key = path.rsplit(".", 1)[-1]
        node.entries.setdefault(key, Entry(Doc())).comment += list(comment)

    def _parent(self, path: str, create: bool) -> Doc:
        node = self
        for part in path.split(".")[:-1]:
            e = node.entries.get(part)
            if e is None or not isinstance(e.value, Doc):
                e = node.entries[part] = Entry(Doc(), e.comment if e else [])
            node = e.value
        return node

    def plain(self) -> Dict[str, Any]:
        """The mapping scitagd reads (commented-out entries left out)."""
        return {k: (e.value.plain() if isinstance(e.value, Doc) else e.value)
                for k, e in self.entries.items() if e.off is None}

    def render(self, indent: int = 0, top: bool = True) -> List[str]:
        pad = " " * indent
        out: List[str] = []
        for key, e in self.entries.items():
            for c in e.comment:
                out += [f"{pad}# {line}" if line else f"{pad}#" for line in _wrap(c, 100 - indent)]
            if e.off is not None:
                value = _plainv(e.value)
                out += [f"{pad}# {line}" for line in _wrap(f"({key}: {e.off})", 100 - indent)]
                if isinstance(value, dict) and value:
                    block = yaml.safe_dump({key: value}, default_flow_style=None, sort_keys=False, width=1000)
                    out += [f"{pad}# {line}" for line in block.rstrip().splitlines()]
                else:
                    out.append(f"{pad}# {key}: {_flow(value)}")
                continue
            if isinstance(e.value, Doc):
                active = any(x.off is None for x in e.value.entries.values())
                # `plugins:` alone reads as "none yet" and takes an uncommented entry below it
                bare = active or (top and key in ("plugins", "backends", "enrichers") and e.value.entries)
                out.append(f"{pad}{key}:" if bare else f"{pad}{key}: {{}}")
                out += e.value.render(indent + 2, False)
            else:
                out.append(f"{pad}{key}: {_flow(e.value)}")
        return out


def _plainv(v: Any) -> Any:
    return v.plain() if isinstance(v, Doc) else v


def _flow(v: Any) -> str:
    return str(yaml.safe_dump(v, default_flow_style=True, width=10_000, allow_unicode=True)).strip().removesuffix(
        "\n...").strip()


def _wrap(text: str, width: int) -> List[str]:
    words, lines, cur = text.split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width - 2:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return [*lines, cur] if cur else lines or [""]


# --- flowd-go ----------------------------------------------------------------------------------

NOT_NEEDED = {
    "workDir": "not used by scitagd (nor by flowd-go)",
    "plugins.namedPipe.maxReaders": "not needed: one reader serves any number of writers",
    "plugins.firefly.deadline": "not needed: datagrams are read as they arrive",
    "plugins.firefly.hasSyslogHeader": "not needed: the syslog header is recognised per datagram",
    "backends.prometheus.skopsPort": "not used: both enrichers' per-flow metrics share one port, label flavour",
}


def _walk(raw: Dict[str, Any], known: set[str], prefix: str = "") -> List[Tuple[str, Any]]:
    """(key path, value) of every leaf; a mapping scitagd reads as a section is walked into
    (an empty one is a leaf: the section, on with its defaults)."""
    out: List[Tuple[str, Any]] = []
    for k, v in raw.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and any(x.startswith(path + ".") for x in known):
            out += _walk(v, known, path)
        else:
            out.append((path, v))
    return out


def from_flowd_go(raw: Dict[str, Any], origin: str) -> Doc:
    from .compat import FLOWD_GO_PID
    from .config import Config

    known = _known_keys(Config)
    doc = Doc()
    if not isinstance(raw, dict):
        raise CommandError(f"{origin}: expected a mapping of sections at the top level")
    doc.set("pidFile", raw.get("pidPath", FLOWD_GO_PID), "flowd-go's pidPath" + (
        "" if "pidPath" in raw else f"; not in the file: flowd-go wrote {FLOWD_GO_PID} by default"))
    for section in ("plugins", "backends", "enrichers"):
        if section in raw and raw[section] is None:
            raw[section] = {}
        for name, v in (raw.get(section) or {}).items():
            if v is None:
                raw[section][name] = {}
    for path, value in _walk(raw, known):
        if path == "pidPath":
            continue
        if path in NOT_NEEDED:
            doc.off(path, value, NOT_NEEDED[path])
        elif path not in known:
            doc.off(path, value, "not a flowd-go key (flowd-go ignored it; scitagd would refuse it)")
        else:
            doc.set(path, {} if value is None and path.count(".") == 1 else value)
    p = raw.get("plugins") or {}
    np_ = p.get("namedPipe")
    if isinstance(np_, dict):
        pipe = np_.get("pipePath", "np")
        if not str(pipe).startswith("/"):
            doc.set("plugins.namedPipe.pipePath", "/" + str(pipe).lstrip("./"),
                    f"flowd-go took {pipe!r} relative to its working directory (/ under its systemd unit); point "
                    "it where StoRM or your scripts write")
        size = np_.get("buffSize")
        if isinstance(size, int) and not 4096 <= size <= 16384:
            doc.set("plugins.namedPipe.buffSize", size, f"each read takes {min(max(size, 4096), 16384)} bytes; lines "
                    "are put together across reads (flowd-go lost a line cut by its buffer)")
    ff = p.get("firefly")
    if isinstance(ff, dict) and "bindAddress" not in ff:
        doc.set("plugins.firefly.bindAddress", "127.0.0.1", "flowd-go's default (scitagd's: 127.0.0.1 and ::1)")
    ps = p.get("perfsonar")
    if isinstance(ps, dict):
        for cap, low in (("experimentID", "experimentId"), ("activityID", "activityId")):
            if cap in ps and low not in ps:
                doc.off(f"plugins.perfsonar.{cap}", ps[cap], f"renamed {low}")
                doc.set(f"plugins.perfsonar.{low}", ps[cap], f"flowd-go ignored {cap} (its rpm/conf.yaml's spelling) "
                        "and tagged with 0; the value you meant")
        if "experimentId" not in ps and "experimentID" not in ps:
            doc.note("plugins.perfsonar", "flowd-go's default ids are 0, which no flow may carry: give experimentId "
                     "and activityId")
        doc.set("plugins.perfsonar.mode", "all", "flowd-go's behaviour: backends.marker.matchAll, every IPv6 flow "
                "marked; `ports` marks only perfSONAR's test connections")
    ip = p.get("iperf3")
    if isinstance(ip, dict):
        exps = ip.get("experimentIDs", [0, 1, 2])
        if 0 in exps or not exps or len(exps) != len(ip.get("activityIDs", [0, 1, 2])):
            doc.off("plugins.iperf3", ip, "experimentIDs " + str(exps) + (" (flowd-go's default)" if
                    "experimentIDs" not in ip else "") + " holds 0, not an experiment id (1..511), or the lists "
                    "differ in length: list the ids, then uncomment")
        elif ip.get("programPath"):
            doc.off("plugins.iperf3.programPath", ip["programPath"], "flowd-go's watcher object cannot drive scitagd "
                    "(other programs and maps); scitagd ships its own")
    m = (raw.get("backends") or {}).get("marker")
    if isinstance(m, dict):
        if m.get("programPath"):
            doc.off("backends.marker.programPath", m["programPath"], "flowd-go's marker objects cannot drive scitagd "
                    "(other programs and maps); scitagd ships its own")
        if m.get("discoverInterfaces") and "targetInterfaces" in m:
            doc.off("backends.marker.targetInterfaces", m["targetInterfaces"], "flowd-go replaced them by the "
                    "discovered interfaces; uncomment to mark on both")
    fb = (raw.get("backends") or {}).get("firefly")
    if isinstance(fb, dict):
        if fb.get("enrichmentMode") == "":
            doc.set("backends.firefly.enrichmentMode", "full", "flowd-go's \"\" is full")
        if isinstance(fb.get("stun"), dict):
            doc.note("backends.firefly.stun", "servers not named here are flowd-go's defaults, public ones: "
                     "stun.l.google.com and stun1..4 (port 3478), api64.ipify.org and ipconfig.io (HTTP, asked first); "
                     "name your own in stunServers and httpServers ([]: none)")
    sk = (raw.get("enrichers") or {}).get("skops")
    if isinstance(sk, dict):
        if sk.get("programPath"):
            doc.off("enrichers.skops.programPath", sk["programPath"], "flowd-go's skops object cannot drive scitagd; "
                    "its sock_ops samples come from scitagd's watcher program")
        if str(sk.get("strategy", "")).lower() == "transition":
            doc.off("enrichers.skops.strategy", sk["strategy"], "transition is not implemented: samples come at most "
                    "once per period per socket (poll)")
    if p.get("iperf3") is None and p.get("perfsonar") is None and not p and not raw.get("backends"):
        doc.note("plugins", "flowd-go's file enables nothing (every line commented): neither does this one")
    return doc


def _known_keys(cls: Any, prefix: str = "") -> set[str]:
    """Every key path scitagd's Config accepts (flowd-go's among them)."""
    import msgspec

    from .confbase import _struct_type

    out = set()
    for f in msgspec.structs.fields(cls):
        path = f"{prefix}.{f.encode_name}" if prefix else f.encode_name
        out.add(path)
        sub = _struct_type(f.type)
        if sub is not None:
            out |= _known_keys(sub, path)
    return out


# --- python flowd ------------------------------------------------------------------------------

def read_flowd(text: str, origin: str) -> Tuple[Dict[str, Any], List[str]]:
    """The literal assignments of a flowd.cfg, never executed, and what could not be read."""
    try:
        tree = ast.parse(text, origin)
    except SyntaxError as e:
        raise CommandError(f"{origin}: not Python (flowd exec()s its configuration): line {e.lineno}: "
                           f"{e.msg}") from None
    values: Dict[str, Any] = {}
    skipped: List[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
                continue
            except (ValueError, SyntaxError, TypeError):
                pass
        src = (ast.get_source_segment(text, node) or type(node).__name__).splitlines()[0][:80]
        skipped.append(f"line {node.lineno}: {src!r} is not a literal assignment: not read (flowd ran it)")
    return values, skipped


# python flowd's hard-coded tag lists (plugins/iperf.py, plugins/iperf_rr.py)
IPERF_IDS = [(2, 9), (2, 19), (3, 3), (3, 4), (4, 3), (4, 4), (5, 10), (5, 14)]
IPERF_RR_IDS = [(2, 19), (2, 19), (3, 3), (3, 3), (4, 3), (4, 3), (5, 10), (5, 10)]


def _networks(v: Any) -> Tuple[List[str], Optional[str]]:
    if v is None:
        return [], None
    if isinstance(v, str):
        return [], f"{v!r} is a string, not a tuple (a missing comma): flowd refused to start with it"
    out = []
    for n in v:
        try:
            out.append(str(ipaddress.ip_network(str(n), strict=False)))
        except ValueError:
            return [], f"{n!r} is not a network: flowd refused to start with it"
    return out, None


def from_flowd(cfg: Dict[str, Any], skipped: List[str], origin: str) -> Doc:
    doc = Doc()
    for s in skipped:
        doc.note("plugins", s)
    url = cfg.get("FLOW_MAP_API")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        doc.set("registry.url", url, "FLOW_MAP_API; refreshed every refreshInterval and kept in cacheFile (flowd "
                "fetched it once, without a timeout, and could not start without it)")
    elif url is not None:
        doc.note("registry", f"FLOW_MAP_API {url!r} is not a URL: the bundled registry is used")
    plugin = cfg.get("PLUGIN")
    internal, err = _networks(cfg.get("NETSTAT_INTERNAL_NETWORKS"))
    if plugin is None:
        doc.note("plugins", "no PLUGIN: flowd refused to start without one")
    elif plugin == "np_api":
        doc.set("plugins.namedPipe.pipePath", "/var/run/flowd", "np_api: flowd's fixed path")
        doc.set("plugins.namedPipe.mode", "0666", "flowd made the FIFO world-writable; better: mode \"0660\" with "
                "group: the writer's (StoRM's) group")
    elif plugin == "firefly":
        doc.set("plugins.firefly.bindAddress", cfg.get("FIREFLY_LISTENER_HOST", "0.0.0.0"),
                "FIREFLY_LISTENER_HOST (flowd's default 0.0.0.0: every IPv4 address; consider allowedSources)")
        doc.set("plugins.firefly.bindPort", int(cfg.get("FIREFLY_LISTENER_PORT", 10514)), "FIREFLY_LISTENER_PORT")
    elif plugin in ("netstat", "netlink"):
        pre = plugin.upper()
        exp, act = cfg.get(f"{pre}_EXPERIMENT"), cfg.get(f"{pre}_ACTIVITY")
        nets, err = _networks(cfg.get(f"{pre}_INTERNAL_NETWORKS"))
        rule = {"remoteNetworks": ALL_NETWORKS, "experiment": exp, "activity": act}
        why = (f"{plugin}: every established TCP connection to a remote outside the internal networks, found as it "
               "is established (sock_ops; flowd polled every 2 s)")
        if exp is None or act is None or err:
            doc.off("plugins.watcher", {"rules": [rule], "ignoreNetworks": INTERNAL + nets},
                    err or f"flowd refuses to start without {pre}_EXPERIMENT and {pre}_ACTIVITY: give them, then "
                    "uncomment")
        else:
            doc.set("plugins.watcher.rules", [rule], why)
            doc.set("plugins.watcher.ignoreNetworks", INTERNAL + nets, f"{pre}_INTERNAL_NETWORKS beside the "
                    "private ranges flowd left out (Python's is_private also holds documentation ranges)")
        if plugin == "netlink":
            doc.set("enrichers.netlink", {}, "the netlink plugin attached tcp_info to its events: ends carry the last "
                    "sample")
    elif plugin in ("iperf", "iperf_rr"):
        ids = IPERF_IDS if plugin == "iperf" else IPERF_RR_IDS
        doc.set("plugins.iperf3.experimentIDs", [e for e, _ in ids], f"{plugin}: flowd's hard-coded tags")
        doc.set("plugins.iperf3.activityIDs", [a for _, a in ids])
        doc.set("plugins.iperf3.randomIDs", plugin == "iperf", "at random (iperf) or in turn (iperf_rr)")
        if plugin == "iperf_rr":
            doc.set("plugins.iperf3.minSourcePort", 5201, "iperf_rr: local ports 5201..5299 (the iperf3 server side)")
            doc.set("plugins.iperf3.maxSourcePort", 5299)
        else:
            doc.set("plugins.iperf3.ignoreNetworks", INTERNAL + internal, "iperf: every connection (it did not look "
                    "for iperf3 despite its name) to a remote outside the internal networks")
        doc.set("plugins.iperf3.cgroupPath", "/sys/fs/cgroup")
    else:
        doc.note("plugins", f"PLUGIN {plugin!r}: not one of flowd's (np_api, firefly, netstat, netlink, iperf, "
                 "iperf_rr): flowd failed on it")
    if err and plugin in ("iperf",):
        doc.note("plugins", f"NETSTAT_INTERNAL_NETWORKS: {err}")
    backends = [b.strip() for b in str(cfg.get("BACKEND", "udp_firefly")).split(",") if b.strip()]
    netlink_info = bool(cfg.get("UDP_FIREFLY_NETLINK") or cfg.get("UDP_FIREFLY_WITH_NETLINK"))
    for b in backends:
        if b == "udp_firefly":
            doc.set("backends.firefly.destinationPort", 10514, "udp_firefly: to the flow's peer, port 10514, with "
                    "a syslog header (APP-NAME scitagd, not flowd)")
            dst = cfg.get("UDP_FIREFLY_DST")
            if dst:
                host = f"[{dst}]" if ":" in str(dst) else str(dst)
                doc.set("backends.firefly.collectors", [f"{host}:10514"], "UDP_FIREFLY_DST (flowd sent over IPv4 only)")
            mapping = {}
            for key, wild in (("UDP_FIREFLY_IP4_SRC", "0.0.0.0"), ("UDP_FIREFLY_IP6_SRC", "::")):
                v = cfg.get(key)
                if v:
                    mapping[wild] = str(v)
            if cfg.get("IP_DISCOVERY_ENABLED") or mapping:
                doc.set("backends.firefly.stun", {}, "IP_DISCOVERY_ENABLED / UDP_FIREFLY_IP*_SRC: this host's "
                        "addresses in fireflies replaced by its public ones")
                if mapping:
                    doc.set("backends.firefly.stun.manualMapping", mapping, "UDP_FIREFLY_IP4_SRC/IP6_SRC: every "
                            "address of this host of that family (flowd replaced every src-ip, a remote one too)")
                if not cfg.get("IP_DISCOVERY_ENABLED"):
                    doc.set("backends.firefly.stun.stunServers", [], "no discovery: IP_DISCOVERY_ENABLED was off")
                    doc.set("backends.firefly.stun.httpServers", [])
                else:
                    doc.note("backends.firefly.stun", "discovery asks public servers (flowd-go's defaults; flowd "
                             "asked stun.l.google.com:19305, stun.services.mozilla.org and my-ip.io)")
            if netlink_info:
                doc.set("enrichers.netlink", {}, "UDP_FIREFLY_NETLINK: fireflies carry the socket's tcp_info (ends: "
                        "the last sample; backends.firefly.enrich: true adds ongoing ones)")
        elif b == "ebpf":
            ifaces = [x for x in str(cfg.get("NETWORK_INTERFACE", "")).split(",") if x]
            if ifaces:
                doc.set("backends.marker.targetInterfaces", ifaces, "NETWORK_INTERFACE")
            else:
                doc.set("backends.marker.targetInterfaces", [], "flowd: every interface with a global IPv6 address")
                doc.set("backends.marker.discoverInterfaces", True)
            doc.set("backends.marker.markingStrategy", "label", "ebpf: the flow label (flowd replaced the root qdisc "
                    "by SFQ; scitagd adds a clsact filter and leaves the qdisc alone)")
        elif b == "prometheus":
            doc.set("backends.prometheus.bindAddress", "0.0.0.0", "flowd listened on every address; 127.0.0.1 keeps "
                    "the metrics local")
            doc.set("backends.prometheus.port", int(cfg.get("PROMETHEUS_SRV_PORT", 9000)), "PROMETHEUS_SRV_PORT")
            doc.set("enrichers.netlink", {}, "per-flow flow_tcp_* metrics come from the netlink enricher (flowd ran "
                    "`ss`)")
        elif b == "dummy":
            doc.note("backends", "BACKEND dummy: an empty module in flowd (it failed on it): left out")
        else:
            doc.note("backends", f"BACKEND {b!r}: not one of flowd's: left out")
    if not backends:
        doc.note("backends", "no BACKEND: flowd refused to start without one")
    for key in ("PROMETHEUS_SS_PATH",):
        if key in cfg:
            doc.note("backends", f"{key}: not needed (scitagd asks the kernel through sock_diag, not ss)")
    return doc


# --- entry point ------------------------------------------------------------------------------

def migrate(kind: str, path: str) -> str:
    """The migrated YAML, checked to load."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CommandError(f"{path}: not UTF-8 text: {e}") from None
    if kind == "flowd-go":
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise CommandError(f"{path}: not valid YAML: {e}") from None
        doc = from_flowd_go(raw, path)
        what = "flowd-go"
    else:
        cfg, skipped = read_flowd(text, path)
        doc = from_flowd(cfg, skipped, path)
        what = "python flowd"
    from .config import from_mapping

    try:
        from_mapping(doc.plain(), "the migrated configuration")
    except ConfigError as e:
        raise CommandError(f"{path}: the migration does not load ({e}): please report this") from None
    head = [f"# scitagd configuration from {what}'s {path}",
            f"# written by `scitagd config migrate --from {kind}` on {datetime.date.today().isoformat()}; check "
            "it with `scitagd conf --config FILE`.",
            "# Comments say where scitagd behaves differently; commented-out keys are not used, with the reason.", ""]
    return "\n".join(head + doc.render()) + "\n"
