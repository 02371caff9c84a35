# SPDX-License-Identifier: Apache-2.0
"""flowd-go compatibility: no key is taken silently. Every key scitagd accepts does what it says,
or the start says which key it is and what scitagd does instead (`notices`); this is also where
a flowd-go file found in flowd-go's place gets flowd-go's defaults where scitagd's differ.

`scitagd run` logs each notice as a warning line, `scitagd conf` prints them on stderr, a reload
logs them again. docs/compat.md has the table of every flowd-go key; tests/compat/test_keys.py
walks flowd-go's reference configuration key by key against this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from .confbase import read_mapping
from .config import Config, from_mapping

__all__ = ["FLOWD_GO_CONFIG", "FLOWD_GO_PID", "Notice", "discover", "given", "load_checked", "notices"]

FLOWD_GO_CONFIG = "/etc/flowd-go/conf.yaml"
FLOWD_GO_PID = "/var/run/flowd-go.pid"


@dataclass(frozen=True)
class Notice:
    key: str  # the key path as the file spells it
    text: str  # what scitagd does instead, and why

    def __str__(self) -> str:
        return f"{self.key}: {self.text}"


def given(raw: Mapping[str, Any], path: str) -> bool:
    """Whether the key path (dotted) is present in the file as written."""
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def load_checked(path: str, flowd_go_file: bool = False) -> Tuple[Config, List[Notice]]:
    """The config at `path` and what to say about it. `flowd_go_file`: the file is flowd-go's,
    found in its place: flowd-go's defaults apply where scitagd's differ (its pid file)."""
    raw = read_mapping(path)
    conf = from_mapping(raw, path)
    out = notices(raw, conf)
    if flowd_go_file and conf.pid_path is None and conf.pid_file is None:
        conf.pid_path = FLOWD_GO_PID
        out.append(Notice("pidPath", f"not given: {FLOWD_GO_PID} is written, flowd-go's default for its file"))
    if flowd_go_file and conf.plugins.namedPipe is not None and not given(raw, "plugins.namedPipe.pipePath"):
        out.append(Notice("plugins.namedPipe.pipePath", f"not given: the FIFO is {conf.plugins.namedPipe.pipe_path} "
                          "(python flowd's); flowd-go's default was 'np' in its working directory"))
    return conf, out


def notices(raw: Mapping[str, Any], conf: Config) -> List[Notice]:
    """One Notice per key given that scitagd takes but does not do as flowd-go did."""
    out: List[Notice] = []

    def note(key: str, text: str) -> None:
        out.append(Notice(key, text))

    if given(raw, "workDir"):
        note("workDir", "not used (flowd-go does not use it either): scitagd keeps no working directory; the "
             f"registry's cache is registry.cacheFile ({conf.registry.cache_file})")
    p = conf.plugins
    np_ = p.namedPipe
    if np_ is not None and given(raw, "plugins.namedPipe.buffSize") and not 4096 <= np_.buff_size <= 16384:
        note("plugins.namedPipe.buffSize", f"{np_.buff_size}: each read takes {min(max(np_.buff_size, 4096), 16384)} "
             "bytes (4096..16384); lines are put together across reads up to maxLineBytes "
             f"({np_.max_line_bytes}), where flowd-go lost any line cut by its buffer")
    if np_ is not None and given(raw, "plugins.namedPipe.maxReaders"):
        note("plugins.namedPipe.maxReaders", "not needed: one reader serves any number of writers (flowd-go sized "
             "an inotify event buffer with it)")
    if p.firefly is not None:
        if given(raw, "plugins.firefly.deadline"):
            note("plugins.firefly.deadline", "not needed: datagrams are read as they arrive, never by a blocking "
                 "read that could need a deadline")
        if given(raw, "plugins.firefly.hasSyslogHeader"):
            note("plugins.firefly.hasSyslogHeader", "not needed: a syslog header is recognised in each datagram, "
                 "with or without (flowd-go ignores the key too)")
    ps = p.perfsonar
    if ps is not None:
        for cap, low in (("experimentID", "experimentId"), ("activityID", "activityId")):
            if given(raw, f"plugins.perfsonar.{cap}") and not given(raw, f"plugins.perfsonar.{low}"):
                note(f"plugins.perfsonar.{cap}", f"flowd-go reads {low} and ignores this spelling (its "
                     f"rpm/conf.yaml's), so it used 0; scitagd uses the value given ({getattr(ps, cap)})")
        if ps.mode == "all":
            m = conf.backends.marker
            if m is None:
                note("plugins.perfsonar", "nothing is marked without backends.marker (flowd-go then sends one firefly "
                     "for [::]:0 -> [::]:0 at start; scitagd sends none); mode: ports marks perfSONAR's test "
                     f"connections ({ps.ports}) through the watcher")
            elif not m.match_all:
                exp = m.match_experiment if m.match_experiment is not None else ps.experiment
                act = m.match_activity if m.match_activity is not None else ps.activity
                note("plugins.perfsonar", "backends.marker.matchAll turned on, as flowd-go does: every IPv6 TCP/UDP "
                     f"packet leaving {', '.join(m.target_interfaces) or 'the discovered interfaces'} is marked "
                     f"experiment {exp} activity {act}; set plugins.perfsonar.mode: ports to mark only perfSONAR's "
                     f"test connections ({ps.ports})")
            if given(raw, "plugins.perfsonar.ports"):
                note("plugins.perfsonar.ports", "used only with mode: ports; with mode: all (flowd-go's) every IPv6 "
                     "flow is marked")
    b = conf.backends
    m = b.marker
    if m is not None:
        if m.debug_mode and m.program_path:
            note("backends.marker.debugMode", f"no effect with programPath: {m.program_path} is loaded as it is")
        if m.discover_interfaces and given(raw, "backends.marker.targetInterfaces"):
            note("backends.marker.discoverInterfaces", "flowd-go replaces targetInterfaces by the discovered "
                 f"interfaces; scitagd marks on both ({', '.join(m.target_interfaces)} and the discovered ones)")
    pr = b.prometheus
    if pr is not None and given(raw, "backends.prometheus.skopsPort"):
        note("backends.prometheus.skopsPort", f"not used: both enrichers' per-flow metrics are served on one port "
             f"({pr.listen_port}), told apart by their label flavour (flowd-go served sock_ops ones on skopsPort)")
    e = conf.enrichers
    if e is not None and e.netlink is not None and given(raw, "enrichers.netlink.ext") and not e.netlink.ext & 2:
        note("enrichers.netlink.ext", f"{e.netlink.ext} leaves out INET_DIAG_INFO (2): the kernel sends no tcp_info, "
             "so ongoing fireflies and ends carry no TCP counters")
    if e is not None and e.skops is not None:
        sk = e.skops
        if given(raw, "enrichers.skops.strategy") and sk.strategy.lower() == "transition":
            note("enrichers.skops.strategy", "transition is not implemented: sock_ops samples come at most once per "
                 "enrichers.period per socket, on RTT callbacks (poll)")
        for key, other in (("plugins.watcher", p.watcher), ("plugins.iperf3", p.iperf3)):
            if other is not None and given(raw, "enrichers.skops.cgroupPath") and (
                    other.cgroup_path.rstrip("/") != sk.cgroup_path.rstrip("/")):
                note("enrichers.skops.cgroupPath", f"the sock_ops program is the watcher's, attached to {key}."
                     f"cgroupPath ({other.cgroup_path})")
                break
    return out


def discover(explicit: Optional[str], default: str) -> Tuple[str, bool]:
    """(path, is flowd-go's): --config, else scitagd's default file, else flowd-go's file."""
    if explicit:
        return explicit, False
    if Path(default).is_file():
        return default, False
    if Path(FLOWD_GO_CONFIG).is_file():
        return FLOWD_GO_CONFIG, True
    return default, False
