# SPDX-License-Identifier: Apache-2.0
"""Config sections of the sources (`plugins:`), flowd-go's keys plus extensions.

Importing this module imports no source implementation: `scitagd conf` and the collector read
configs without paying for aiohttp or eBPF. Each struct validates itself and raises ValueError
naming the key and what was expected; config.py adds the key path. Each struct's `Keys:` block
documents its keys (confdoc.py turns them into the sample config and scitagd.yaml(5)).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import re
from typing import List, Optional, Tuple, Union

import msgspec

from ..netutil import IPNetwork, check_bind_address, check_host, check_networks, check_port

__all__ = [
    "INTERNAL_NETWORKS",
    "ApiConfig",
    "FireflySourceConfig",
    "Iperf3Config",
    "NamedPipeConfig",
    "PerfsonarConfig",
    "Receiver",
    "WatchRule",
    "WatcherConfig",
    "parse_ports",
]


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`plugins.api`: the REST API storage systems call to report transfers (POST /api/v1/flows).
    Who may call: a Host header naming this server (against DNS rebinding) and, off loopback, a
    bearer token.

    Keys:
      bindAddress: address to listen on. Off loopback, token or tokenFile is required (or
        allowUnauthenticated: true).
      bindPort: TCP port.
      maxBodyBytes: largest request body accepted, 256..1048576 bytes; larger ones get 413.
      allowedHosts: Host header names accepted besides loopback names and the bind address (the
        names clients use to reach this host).
      token: bearer token clients send as `Authorization: Bearer <token>`, at least 16 characters
        (e.g. `openssl rand -hex 32`). tokenFile keeps it out of this file.
      tokenFile: absolute path of a file whose first line is the token, read when the API starts.
      allowUnauthenticated: true lets anyone who reaches a non-loopback bindAddress report flows.
      maxConnections: open connections at most; beyond it the longest-idle one is closed.
      maxConnectionsPerSource: open connections at most per client address.
      headerTimeout: seconds a client has to send the request line and headers.
      keepAliveTimeout: seconds an idle keep-alive connection is kept.
      requestTimeout: seconds a client has to send the whole body.
    """

    bind_address: str = "127.0.0.1"
    bind_port: int = 7777
    max_body_bytes: int = 16384
    # who may call: a Host header that names this server (DNS rebinding), a bearer token
    allowed_hosts: List[str] = msgspec.field(default_factory=list)
    token: Optional[str] = None
    token_file: Optional[str] = None
    allow_unauthenticated: bool = False
    # how much a client may hold (httpserver.py)
    max_connections: int = 256
    max_connections_per_source: int = 64
    header_timeout: float = 10.0
    keep_alive_timeout: float = 15.0
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        check_port("bindPort", self.bind_port)
        if not 256 <= self.max_body_bytes <= 1 << 20:
            raise ValueError(f"maxBodyBytes {self.max_body_bytes}: expected 256..1048576")
        for h in self.allowed_hosts:
            check_host("allowedHosts", h)
        self.allowed_hosts = [h.lower().rstrip(".") for h in self.allowed_hosts]
        if self.token is not None and self.token_file is not None:
            raise ValueError("token and tokenFile: expected one of them, not both")
        if self.token is not None:
            check_token("token", self.token)
        if self.token_file is not None and not os.path.isabs(self.token_file):
            raise ValueError(f"tokenFile {self.token_file!r}: expected an absolute path")
        if (not ipaddress.ip_address(self.bind_address).is_loopback and self.token is None
                and self.token_file is None and not self.allow_unauthenticated):
            raise ValueError(f"bindAddress {self.bind_address} is not a loopback address: set token or "
                             "tokenFile (clients then send 'Authorization: Bearer <token>'), or "
                             "allowUnauthenticated: true to let anyone who reaches the port report flows")
        if not 1 <= self.max_connections <= 65536:
            raise ValueError(f"maxConnections {self.max_connections}: expected 1..65536")
        if not 1 <= self.max_connections_per_source <= self.max_connections:
            raise ValueError(f"maxConnectionsPerSource {self.max_connections_per_source}: expected "
                             f"1..maxConnections ({self.max_connections})")
        for key, v in (("headerTimeout", self.header_timeout), ("keepAliveTimeout", self.keep_alive_timeout),
                       ("requestTimeout", self.request_timeout)):
            if not 0.1 <= v <= 3600:
                raise ValueError(f"{key} {v}: expected 0.1..3600 seconds")

    def read_token(self) -> Optional[str]:
        """The token in force: `token`, or the first line of `tokenFile` (read at start)."""
        if self.token_file is None:
            return self.token
        try:
            with open(self.token_file, "rb") as f:
                raw = f.read(4097)
        except OSError as e:
            raise ValueError(f"tokenFile {self.token_file!r}: cannot read: {e.strerror or e}") from None
        lines = raw.decode("utf-8", "replace").strip().splitlines()
        text = lines[0].strip() if lines else ""
        check_token(f"tokenFile {self.token_file!r}", text)
        return text


_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,4096}$")  # RFC 6750 token68, at least 16 characters


def check_token(key: str, token: str) -> None:
    if not _TOKEN.match(token):
        raise ValueError(f"{key}: expected at least 16 characters of A-Z a-z 0-9 . _ ~ + / = - "
                         "(e.g. the output of `openssl rand -hex 32`)")


class NamedPipeConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`plugins.namedPipe`: the FIFO StoRM and scripts write lines to (`start|end tcp SRC SPORT DST
    DPORT EXP ACT`, python flowd's and flowd-go's protocol). scitagd creates it, checks every
    checkInterval that it is still its own FIFO and recreates it otherwise.

    Keys:
      pipePath: absolute path of the FIFO. Under systemd the unit may only write /run/scitagd: use
        /run/scitagd/flowd there (a tmpfiles.d link keeps /run/flowd working).
      mode: permission bits of the FIFO, an octal string.
      group: group (name or gid) given the FIFO, so writers in it need not be root.
      maxReaders: flowd-go key, accepted and unused: one reader reads every line in order (a
        warning at start says so).
      buffSize: flowd-go key: bytes read per wake-up (clamped to 4..16 KiB).
      maxLineBytes: longest line accepted, 64..65536 bytes; longer lines are dropped and counted.
      checkInterval: seconds between checks that pipePath is still our FIFO, 0.05..300.
    """

    pipe_path: str = "/var/run/flowd"
    mode: str = "0660"
    group: Optional[Union[str, int]] = None
    max_readers: int = 5
    buff_size: int = 65536
    max_line_bytes: int = 1024
    check_interval: float = 2.0  # seconds between checks that pipePath is still our FIFO

    def __post_init__(self) -> None:
        if not 0.05 <= self.check_interval <= 300:
            raise ValueError(f"checkInterval {self.check_interval}: expected 0.05..300 seconds")
        if not os.path.isabs(self.pipe_path):
            raise ValueError(f"pipePath {self.pipe_path!r}: expected an absolute path")
        try:
            m = int(self.mode, 8)
        except ValueError:
            raise ValueError(f"mode {self.mode!r}: expected an octal string like \"0660\"") from None
        if not 0 <= m <= 0o777:
            raise ValueError(f"mode {self.mode!r}: expected permission bits 0000..0777")
        if self.buff_size < 1:
            raise ValueError(f"buffSize {self.buff_size}: expected > 0")
        if not 64 <= self.max_line_bytes <= 65536:
            raise ValueError(f"maxLineBytes {self.max_line_bytes}: expected 64..65536")

    def gid(self) -> int | None:
        if self.group is None:
            return None
        if isinstance(self.group, int):
            return self.group
        if self.group.isdigit():
            return int(self.group)
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ValueError(f"plugins.namedPipe.group {self.group!r}: no such group") from None


class Receiver(msgspec.Struct, forbid_unknown_fields=True):
    """One place to forward received fireflies to.

    Keys:
      address: host name or address.
      port: UDP port.
    """

    address: str
    port: int = 10514

    def __post_init__(self) -> None:
        check_host("address", self.address)
        check_port("port", self.port)


class FireflySourceConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`plugins.firefly`: a UDP listener for fireflies from XRootD, dCache and other producers on this
    host; each becomes a flow (marked, announced to the peer) as if reported through the API.

    Keys:
      bindAddress: one address to listen on (flowd-go's key).
      bindAddresses: several addresses to listen on; default 127.0.0.1 and ::1.
      bindPort: UDP port (XRootD's default target is 10514).
      allowedSources: CIDRs whose fireflies are taken; others are dropped and counted. Unset: any.
      fireflyReceivers: where to forward each valid firefly unchanged (a collector of your own).
      receiveBuffer: socket receive buffer in bytes; raise net.core.rmem_max if the log says capped.
      hasSyslogHeader: flowd-go key, accepted: both framings are read whatever it says (a warning
        at start says so).
      deadline: flowd-go key, accepted and unused (the listener never blocks; a warning at start).
      bufferSize: the longest datagram taken, 2048..65535 bytes (flowd-go's read buffer); longer
        ones are refused and counted (too_large). Unset: any a UDP datagram holds.
    """

    bind_address: Optional[str] = None
    bind_addresses: Optional[List[str]] = None
    bind_port: int = 10514
    allowed_sources: Optional[List[str]] = None
    firefly_receivers: List[Receiver] = []
    receive_buffer: int = 8 << 20
    has_syslog_header: Optional[bool] = None
    deadline: int = 0
    buffer_size: Optional[int] = None  # flowd-go's: longer datagrams are refused (too_large)

    def __post_init__(self) -> None:
        for a in self.addresses():
            check_bind_address("bindAddress", a)
        check_port("bindPort", self.bind_port)
        check_networks("allowedSources", self.allowed_sources or [])
        if self.buffer_size is not None and not 2048 <= self.buffer_size <= 65535:
            raise ValueError(f"bufferSize {self.buffer_size}: expected 2048..65535 bytes (flowd-go refuses less "
                             "than 2048 too)")

    def addresses(self) -> List[str]:
        if self.bind_addresses:
            return list(self.bind_addresses)
        if self.bind_address:
            return [self.bind_address]
        return ["127.0.0.1", "::1"]

    def networks(self) -> List[IPNetwork] | None:
        if self.allowed_sources is None:
            return None
        return [ipaddress.ip_network(c, strict=False) for c in self.allowed_sources]


def parse_ports(key: str, v: Union[str, int, None]) -> Tuple[int, int]:
    """'5201' or '5201-5210' -> (low, high); empty -> (0, 0), any port."""
    if v in (None, ""):
        return (0, 0)
    text = str(v)
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"{key} {v!r}: expected a port or a range like 5201-5210") from None
    if not (1 <= a <= b <= 65535):
        raise ValueError(f"{key} {v!r}: expected ports 1..65535, low before high")
    return (a, b)


INTERNAL_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                     "::1/128", "fc00::/7", "fe80::/10"]


class WatchRule(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """One watcher rule: TCP connections that match are tagged with its experiment and activity, in
    the kernel, before their first data packet.

    Keys:
      experiment: experiment id or registry name.
      activity: activity id or registry name.
      localPorts: a port or range ("1094", "20000-25000") on this host.
      remotePorts: a port or range on the peer.
      remoteNetworks: CIDRs the peer must be in.
      uids: users (names or uids) owning the socket; checked in user space on establishment.
      cgroup: cgroup v2 path the socket's process must be in; checked in user space.
    """

    experiment: Union[int, str]
    activity: Union[int, str]
    local_ports: Union[str, int, None] = None
    remote_ports: Union[str, int, None] = None
    remote_networks: List[str] = msgspec.field(default_factory=list)
    uids: List[Union[int, str]] = msgspec.field(default_factory=list)
    cgroup: Optional[str] = None

    def __post_init__(self) -> None:
        parse_ports("localPorts", self.local_ports)
        parse_ports("remotePorts", self.remote_ports)
        check_networks("remoteNetworks", self.remote_networks)
        if not (self.local_ports or self.remote_ports or self.remote_networks or self.uids or self.cgroup):
            # it would tag every TCP connection of the host; backends.marker.matchAll says so openly
            raise ValueError("a rule needs at least one of localPorts, remotePorts, remoteNetworks, uids, "
                             "cgroup (to mark every flow, use backends.marker.matchAll)")

    def uid_numbers(self) -> Tuple[int, ...]:
        import pwd

        out = []
        for u in self.uids:
            if isinstance(u, int) or str(u).isdigit():
                out.append(int(u))
                continue
            try:
                out.append(pwd.getpwnam(str(u)).pw_uid)
            except KeyError:
                raise ValueError(f"uids {u!r}: no such user") from None
        return tuple(out)


class WatcherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`plugins.watcher`: finds TCP connections itself (cgroup sock_ops eBPF program, or sock_diag
    polling) and tags those its rules match; ends carry the socket's exact byte counts.

    Keys:
      cgroupPath: cgroup v2 directory the sock_ops program attaches to (all processes below it).
      rules: the tagging rules; the first that matches wins.
      mode: auto (eBPF, polling when eBPF is unavailable), ebpf (fail without it) or poll.
      pollInterval: seconds between sock_diag polls in poll mode, 0.05..60.
      ignoreNetworks: peers in these CIDRs are never tagged (default: RFC 1918, loopback,
        link-local, ULA).
      programPath: a site's build of scitagd's watcher.bpf.c, checked for the programs, maps and
        struct layouts scitagd drives before loading (flowd-go's objects are refused).
      debugMode: load the debug build (watcher-debug.bpf.o): each connection's decision in the
        kernel's trace buffer (cat /sys/kernel/tracing/trace_pipe).
    """

    cgroup_path: str = "/sys/fs/cgroup"
    rules: List[WatchRule] = msgspec.field(default_factory=list)
    mode: str = "auto"
    poll_interval: float = 1.0
    ignore_networks: List[str] = msgspec.field(default_factory=lambda: list(INTERNAL_NETWORKS))
    program_path: str = ""  # a site's build of watcher.bpf.c (checked by bpf/objcheck.py)
    debug_mode: bool = False  # load watcher-debug.bpf.o: decisions in the kernel's trace buffer

    def __post_init__(self) -> None:
        check_networks("ignoreNetworks", self.ignore_networks)
        if self.mode not in ("auto", "ebpf", "poll"):
            raise ValueError(f"mode {self.mode!r}: expected auto, ebpf or poll")
        if not 0.05 <= self.poll_interval <= 60:
            raise ValueError(f"pollInterval {self.poll_interval}: expected 0.05..60 seconds")
        check_program_path("programPath", self.program_path)


def check_program_path(key: str, path: str) -> None:
    if path and not os.path.isabs(path):
        raise ValueError(f"{key} {path!r}: expected an absolute path to an eBPF object file")


PERFSONAR_MODES = ("all", "ports")


class PerfsonarConfig(msgspec.Struct, forbid_unknown_fields=True):
    """`plugins.perfsonar`: perfSONAR hosts. `mode: all` (the default, flowd-go's) turns on
    backends.marker.matchAll: every IPv6 flow is marked with these ids; `mode: ports` tags only
    perfSONAR's iperf3 measurement connections, found by the watcher by port.

    Keys:
      activityID: activity id to tag with (the spelling of flowd-go's rpm/conf.yaml, which flowd-go
        ignores and tags with 0; scitagd reads it, a warning at start says so).
      experimentID: experiment id to tag with (as activityID).
      ports: port or range perfSONAR's iperf3 tests listen on, with mode: ports (extension).
      experimentId: experiment id to tag with (flowd-go's key).
      activityId: activity id to tag with (flowd-go's key).
      mode: all (every IPv6 flow, flowd-go's) or ports (only the test connections) (extension).
    """

    activityID: Optional[int] = None
    experimentID: Optional[int] = None
    ports: str = "5201-5210"
    experimentId: Optional[int] = None
    activityId: Optional[int] = None
    mode: str = "all"

    def __post_init__(self) -> None:
        for a, b, name in ((self.experimentId, self.experimentID, "experiment"),
                           (self.activityId, self.activityID, "activity")):
            if a is not None and b is not None and a != b:
                raise ValueError(f"{name}Id {a} and {name}ID {b}: the same setting spelt two ways, give one")
        if self.mode not in PERFSONAR_MODES:
            raise ValueError(f"mode {self.mode!r}: expected all (every IPv6 flow, as flowd-go) or ports (only "
                             "perfSONAR's test connections)")
        parse_ports("ports", self.ports)

    @property
    def experiment(self) -> int:
        """experimentId, else experimentID, else flowd-go's default 0 (not a valid id)."""
        return next((v for v in (self.experimentId, self.experimentID) if v is not None), 0)

    @property
    def activity(self) -> int:
        return next((v for v in (self.activityId, self.activityID) if v is not None), 0)


class Iperf3Config(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`plugins.iperf3`: flowd-go's iperf3 plugin, on the watcher's sock_ops program: a TCP
    connection whose local ("source") and remote ("destination") ports are within the bounds is
    tagged as it is established with the next (experiment, activity) pair of the lists, chosen in
    the kernel, so it is marked from its first data packet; its end carries the same pair.

    Keys:
      minSourcePort: lowest local port of the connections to tag; 0: no bound.
      maxSourcePort: highest local port; 0: no bound.
      minDestinationPort: lowest remote port; 0: no bound.
      maxDestinationPort: highest remote port; 0: no bound.
      cgroupPath: cgroup v2 directory to watch; "": the parent of scitagd's own cgroup (flowd-go's).
      programPath: a site's build of scitagd's watcher.bpf.c, checked before loading (flowd-go's
        watcher objects are refused).
      debugMode: load the watcher's debug build: its decisions in the kernel's trace buffer.
      randomIDs: pick from the id lists at random instead of in turn.
      activityIDs: activity ids, paired with experimentIDs by position.
      experimentIDs: experiment ids (1..511); the lists must have the same length (flowd-go's
        default [0, 1, 2] holds 0, no experiment: give them).
      ignoreNetworks: remote networks left alone (extension); [] (flowd-go's): none.
    """

    min_source_port: int = 0
    max_source_port: int = 0
    min_destination_port: int = 0
    max_destination_port: int = 0
    cgroup_path: str = "/sys/fs/cgroup"
    program_path: str = ""
    debug_mode: bool = False
    random_i_ds: bool = msgspec.field(default=False, name="randomIDs")
    activity_i_ds: Optional[List[int]] = msgspec.field(default=None, name="activityIDs")
    experiment_i_ds: Optional[List[int]] = msgspec.field(default=None, name="experimentIDs")
    ignore_networks: List[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        from ..tags import ACTIVITY_MAX, ACTIVITY_MIN, EXPERIMENT_MAX, EXPERIMENT_MIN

        for key, v in (("minSourcePort", self.min_source_port), ("maxSourcePort", self.max_source_port),
                       ("minDestinationPort", self.min_destination_port),
                       ("maxDestinationPort", self.max_destination_port)):
            if not 0 <= v <= 65535:
                raise ValueError(f"{key} {v}: expected 0 (no bound) or a port 1..65535")
        for lo, hi, what in ((self.min_source_port, self.max_source_port, "SourcePort"),
                             (self.min_destination_port, self.max_destination_port, "DestinationPort")):
            if lo and hi and lo > hi:
                raise ValueError(f"min{what} {lo} is above max{what} {hi}")
        if self.experiment_i_ds is None and self.activity_i_ds is None:
            # flowd-go's default [0, 1, 2] holds experiment 0: refused at start (wiring), not here,
            # so that the section with its defaults still reads (scitagd conf, the sample)
            check_program_path("programPath", self.program_path)
            check_networks("ignoreNetworks", self.ignore_networks)
            return
        exps = [0, 1, 2] if self.experiment_i_ds is None else self.experiment_i_ds
        acts = [0, 1, 2] if self.activity_i_ds is None else self.activity_i_ds
        if not exps or len(exps) != len(acts):
            raise ValueError(f"experimentIDs {exps} and activityIDs {acts}: expected two lists of the same "
                             "length, not empty (pairs handed out in turn or at random)")
        if len(exps) > 1024:
            raise ValueError(f"experimentIDs: {len(exps)} pairs; expected at most 1024")
        for e in exps:
            if not EXPERIMENT_MIN <= e <= EXPERIMENT_MAX:
                given = "flowd-go's default [0, 1, 2], used when experimentIDs is not given, holds" if (
                    self.experiment_i_ds is None) else "it holds"
                raise ValueError(f"experimentIDs {exps}: {given} {e}, not an experiment id "
                                 f"({EXPERIMENT_MIN}..{EXPERIMENT_MAX}); list the experiments to tag with")
        for a in acts:
            if not ACTIVITY_MIN <= a <= ACTIVITY_MAX:
                raise ValueError(f"activityIDs {acts}: {a} is not an activity id ({ACTIVITY_MIN}..{ACTIVITY_MAX})")
        check_program_path("programPath", self.program_path)
        check_networks("ignoreNetworks", self.ignore_networks)

    def pairs(self) -> List[Tuple[int, int]]:
        exps = [0, 1, 2] if self.experiment_i_ds is None else self.experiment_i_ds
        acts = [0, 1, 2] if self.activity_i_ds is None else self.activity_i_ds
        return list(zip(exps, acts))

    def port_ranges(self) -> Tuple[Optional[str], Optional[str]]:
        """flowd-go's bounds as watcher port ranges: (local, remote), None for any."""
        def rng(lo: int, hi: int) -> Optional[str]:
            if not lo and not hi:
                return None
            return f"{lo or 1}-{hi or 65535}"

        return (rng(self.min_source_port, self.max_source_port),
                rng(self.min_destination_port, self.max_destination_port))
