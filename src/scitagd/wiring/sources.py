# SPDX-License-Identifier: Apache-2.0
"""`plugins:` -> sources. perfSONAR is a preset of the watcher (its iperf3 ports), unless
backends.marker.matchAll marks everything as flowd-go does; enrichers.skops needs the watcher's
sock_ops program, so it brings a watcher with no rules when none is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..components import Host, Source
from ..config import Config
from ..errors import StartupError
from ..sources.conf import WatcherConfig, WatchRule
from .enrichers import enricher_key

__all__ = ["source_specs", "watcher_config"]


def source_specs(conf: Config, host: Host) -> List[Tuple[str, str, Any, Any]]:
    p = conf.plugins
    if p.iperf3 is not None:
        raise StartupError("plugins.iperf3: configured but not available in this version of scitagd; "
                           "remove the section to run without it")
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
    watcher = conf.plugins.watcher
    if skops and watcher is None:
        cg = conf.enrichers.skops.cgroup_path if conf.enrichers and conf.enrichers.skops else "/sys/fs/cgroup"
        watcher = WatcherConfig(cgroup_path=cg, mode="ebpf")  # the sampler is the watcher's program
    ps = conf.plugins.perfsonar
    marker = conf.backends.marker
    if ps is not None and not (marker is not None and marker.match_all):
        # perfSONAR through the watcher: its measurement connections, not everything
        try:
            extra = [WatchRule(experiment=ps.experimentID, activity=ps.activityID, local_ports=ps.ports),
                     WatchRule(experiment=ps.experimentID, activity=ps.activityID, remote_ports=ps.ports)]
        except ValueError as e:
            raise StartupError(f"plugins.perfsonar: {e}") from None
        base = watcher or WatcherConfig()
        watcher = WatcherConfig(cgroup_path=base.cgroup_path, rules=[*base.rules, *extra], mode=base.mode,
                                poll_interval=base.poll_interval, ignore_networks=base.ignore_networks)
    return watcher
