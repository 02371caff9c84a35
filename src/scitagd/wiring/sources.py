"""`plugins:` -> sources. perfSONAR is a preset of the watcher (its iperf3 ports), unless
backends.marker.matchAll marks everything as flowd-go does; enrichers.skops needs the watcher's
sock_ops program, so it brings a watcher with no rules when none is configured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from ..components import Host, Source
from ..config import Config
from ..errors import StartupError
from ..sources.conf import WatcherConfig, WatchRule

__all__ = ["build_sources", "watcher_config"]

if TYPE_CHECKING:
    from ..enrich.skops import SkopsEnricher


def build_sources(conf: Config, host: Host, skops: Optional[SkopsEnricher]) -> List[Source]:
    p = conf.plugins
    if p.iperf3 is not None:
        raise StartupError("plugins.iperf3: configured but not available in this version of scitagd; "
                           "remove the section to run without it")
    sources: List[Source] = []
    if p.api is not None:
        from ..sources.api import ApiSource

        sources.append(ApiSource(host, p.api))
    if p.namedPipe is not None:
        from ..sources.namedpipe import NamedPipeSource

        sources.append(NamedPipeSource(host, p.namedPipe))
    if p.firefly is not None:
        from ..sources.firefly import FireflySource

        sources.append(FireflySource(host, p.firefly))
    watcher = watcher_config(conf, skops is not None)
    if watcher is not None:
        from ..sources.watcher import WatcherSource

        marker = conf.backends.marker
        pin = Path(marker.pin_path) / "flows" if marker is not None else None
        sources.append(WatcherSource(host, watcher, pin, skops))
    return sources


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
