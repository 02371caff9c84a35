"""`backends.marker` config (flowd-go's keys). The marker itself lives in sinks/marker.py.

  targetInterfaces    interfaces to attach to (default ["lo"])
  discoverInterfaces  attach to every interface with a global IPv6 address (default false)
  removeQdisc         remove the clsact qdisc at exit if scitagd created it (default true)
  programPath         a compiled object to load instead of the shipped one
  markingStrategy     label | hopByHop | destination | hopByHopDestination (default label)
  matchAll            mark every IPv6 flow with matchExperiment/matchActivity (default false)
  debugMode           accepted
  matchExperiment, matchActivity   extension: the tag for matchAll (else plugins.perfsonar's ids)
  mapSize             extension: flow map capacity, an LRU (default 262144; each flow takes two)
  checkInterval       extension: seconds between checks that every interface has our filter (2)
  pinPath             extension: bpffs directory for the pinned maps (default /sys/fs/bpf/scitagd)
  tcPriority          extension: priority of our clsact egress filter (default 1: before others;
                      it passes every packet on to the filters after it)
"""

from __future__ import annotations

from typing import List, Optional

import msgspec

STRATEGIES = ("label", "hopByHop", "destination", "hopByHopDestination")


class MarkerConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    target_interfaces: List[str] = msgspec.field(default_factory=lambda: ["lo"])
    discover_interfaces: bool = False
    remove_qdisc: bool = True
    program_path: str = ""
    marking_strategy: str = "label"
    match_all: bool = False
    match_experiment: Optional[int] = None
    match_activity: Optional[int] = None
    debug_mode: bool = False
    map_size: int = 262144
    check_interval: float = 2.0
    pin_path: str = "/sys/fs/bpf/scitagd"
    tc_priority: int = 1

    def __post_init__(self) -> None:
        folded = {s.lower(): s for s in STRATEGIES}
        s = folded.get(self.marking_strategy.lower())
        if s is None:
            raise ValueError(f"markingStrategy {self.marking_strategy!r}: expected one of "
                             + ", ".join(STRATEGIES))
        self.marking_strategy = s
        if not 1024 <= self.map_size <= 1 << 24:
            raise ValueError(f"mapSize {self.map_size}: expected 1024..16777216")
        if not 0.1 <= self.check_interval <= 300:
            raise ValueError(f"checkInterval {self.check_interval}: expected 0.1..300 seconds")
        if not 1 <= self.tc_priority <= 0xFFFF:
            raise ValueError(f"tcPriority {self.tc_priority}: expected 1..65535")
        if not self.pin_path.startswith("/sys/fs/bpf/") or ".." in self.pin_path:
            raise ValueError(f"pinPath {self.pin_path!r}: expected a directory under /sys/fs/bpf/")
        for name in self.target_interfaces:
            if not name or len(name) > 15 or "/" in name or " " in name:
                raise ValueError(f"targetInterfaces {name!r}: expected an interface name "
                                 "(1-15 characters, no '/' or spaces)")
