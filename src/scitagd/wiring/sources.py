# SPDX-License-Identifier: Apache-2.0
"""`plugins:` -> sources. One watcher (one sock_ops program) serves plugins.watcher's rules and
the presets built on it: plugins.iperf3 (a rule handing out its tag lists), plugins.perfsonar
with `mode: ports` (its iperf3 ports; with `mode: all`, flowd-go's, the marker marks everything
instead), and enrichers.skops (the program's samples: a watcher with no rules when none is
configured)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..components import Host, Source
from ..config import Config
from ..errors import StartupError
from ..sources.conf import WatcherConfig, WatchRule
from .enrichers import enricher_key

__all__ = ["TaggedRule", "own_parent_cgroup", "source_specs", "watcher_config"]

ALL_NETWORKS = ["0.0.0.0/0", "::/0"]


class TaggedRule(WatchRule):
    """A watcher rule built by a preset (plugins.iperf3), not written in YAML: a list of tags
    handed out in turn (or at random), and whether the watcher's ignoreNetworks apply."""

    tags: Tuple[Tuple[int, int], ...] = ()
    random: bool = False
    all_networks: bool = False


def own_parent_cgroup() -> str:
    """flowd-go's `cgroupPath: ""`: the parent of this process's own cgroup (cgroup v2)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise StartupError(f"plugins.iperf3.cgroupPath \"\": cannot read /proc/self/cgroup: {e.strerror}") from None
    for line in lines:
        if line.startswith("0::"):
            rel = os.path.dirname(line[3:].rstrip("/")) or "/"
            return os.path.normpath("/sys/fs/cgroup" + rel)
    raise StartupError("plugins.iperf3.cgroupPath \"\": this process is in no cgroup v2 (no 0:: line in "
                       "/proc/self/cgroup); give cgroupPath")


def source_specs(conf: Config, host: Host) -> List[Tuple[str, str, Any, Any]]:
    p = conf.plugins
    out: List[Tuple[str, str, Any, Any]] = []
    if p.api is not None:
        api = p.api

        def build_api(_built: Dict[str, Any]) -> Source:
            from ..sources.api import ApiSource

            return ApiSource(host, api)

        out.append(("source", "plugins.api", api, build_api))
    if p.namedPipe is not None:
        pipe = p.namedPipe

        def build_pipe(_built: Dict[str, Any]) -> Source:
            from ..sources.namedpipe import NamedPipeSource

            return NamedPipeSource(host, pipe)

        out.append(("source", "plugins.namedPipe", pipe, build_pipe))
    if p.firefly is not None:
        ff = p.firefly

        def build_firefly(_built: Dict[str, Any]) -> Source:
            from ..sources.firefly import FireflySource

            return FireflySource(host, ff)

        out.append(("source", "plugins.firefly", ff, build_firefly))
    skops = conf.enrichers is not None and conf.enrichers.skops is not None
    watcher = watcher_config(conf, skops)
    if watcher is not None:
        marker = conf.backends.marker
        pin = Path(marker.pin_path) / "flows" if marker is not None else None
        wconf = watcher

        def build_watcher(built: Dict[str, Any]) -> Source:
            from ..sources.watcher import WatcherSource

            group = built.get("enrichers")
            return WatcherSource(host, wconf, pin, group.skops if group is not None else None)

        # the skops sampler it feeds, and the map it writes into, are part of what it is
        key = (wconf, pin, enricher_key(conf) if skops else None)
        out.append(("source", "plugins.watcher", key, build_watcher))
    return out


def watcher_config(conf: Config, skops: bool) -> Optional[WatcherConfig]:
    """plugins.watcher with what the presets add; conflicting settings are a StartupError."""
    watcher = conf.plugins.watcher
    if skops and watcher is None:
        cg = conf.enrichers.skops.cgroup_path if conf.enrichers and conf.enrichers.skops else "/sys/fs/cgroup"
        watcher = WatcherConfig(cgroup_path=cg, mode="ebpf")  # the sampler is the watcher's program
    extra: List[WatchRule] = []
    ps = conf.plugins.perfsonar
    if ps is not None and ps.mode == "ports":
        # perfSONAR through the watcher: its measurement connections, not everything
        try:
            extra += [WatchRule(experiment=ps.experiment, activity=ps.activity, local_ports=ps.ports),
                      WatchRule(experiment=ps.experiment, activity=ps.activity, remote_ports=ps.ports)]
        except ValueError as e:
            raise StartupError(f"plugins.perfsonar: {e}") from None
    cgroup = watcher.cgroup_path if watcher is not None else None
    ignore = watcher.ignore_networks if watcher is not None else None
    ip = conf.plugins.iperf3
    if ip is not None:
        if ip.experiment_i_ds is None and ip.activity_i_ds is None:
            raise StartupError("plugins.iperf3: experimentIDs and activityIDs not given: flowd-go's default "
                               "[0, 1, 2] holds experiment 0, not an experiment id (1..511); list the ids to tag "
                               "with")
        cg = ip.cgroup_path or own_parent_cgroup()
        if cgroup is not None and os.path.normpath(cg) != os.path.normpath(cgroup):
            raise StartupError(f"plugins.iperf3.cgroupPath {cg!r} and plugins.watcher.cgroupPath {cgroup!r}: one "
                               "sock_ops program serves both, give them the same cgroup")
        cgroup = cg
        local, remote = ip.port_ranges()
        all_nets = not ip.ignore_networks
        if not all_nets and ignore is not None and ignore != ip.ignore_networks:
            raise StartupError("plugins.iperf3.ignoreNetworks and plugins.watcher.ignoreNetworks differ: one "
                               "sock_ops program serves both, give the same list (or [] to plugins.iperf3)")
        if not all_nets:
            ignore = list(ip.ignore_networks)
        pairs = ip.pairs()
        extra.append(TaggedRule(experiment=pairs[0][0], activity=pairs[0][1], local_ports=local,
                                remote_ports=remote, remote_networks=[] if (local or remote) else ALL_NETWORKS,
                                tags=tuple(pairs), random=ip.random_i_ds, all_networks=all_nets))
    if watcher is None and not extra:
        return None
    base = watcher or WatcherConfig()
    program, debug = _program(conf)
    rules = [*base.rules, *extra]
    if len(rules) == len(base.rules) and program == base.program_path and debug == base.debug_mode and (
            cgroup in (None, base.cgroup_path)) and (ignore is None or ignore == base.ignore_networks):
        return base
    return WatcherConfig(cgroup_path=cgroup or base.cgroup_path, rules=rules, mode=base.mode,
                         poll_interval=base.poll_interval,
                         ignore_networks=list(base.ignore_networks if ignore is None else ignore),
                         program_path=program, debug_mode=debug)


def _program(conf: Config) -> Tuple[str, bool]:
    """The watcher object: plugins.watcher's, plugins.iperf3's and enrichers.skops's programPath
    (the sock_ops program is one for all three: they must agree) and debugMode (any of them)."""
    given = []
    debug = False
    w, ip = conf.plugins.watcher, conf.plugins.iperf3
    sk = conf.enrichers.skops if conf.enrichers is not None else None
    for key, c in (("plugins.watcher", w), ("plugins.iperf3", ip), ("enrichers.skops", sk)):
        if c is None:
            continue
        if c.program_path:
            given.append((key, c.program_path))
        debug = debug or c.debug_mode
    paths = {p for _, p in given}
    if len(paths) > 1:
        raise StartupError("programPath differs: " + ", ".join(f"{k}.programPath {p!r}" for k, p in given)
                           + ": one sock_ops program serves them all, give one object")
    return (given[0][1] if given else ""), debug
