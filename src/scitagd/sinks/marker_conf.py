"""`backends.marker` config (flowd-go's keys). The marker itself lives in sinks/marker.py.

  targetInterfaces    interfaces to attach to (default ["lo"])
  discoverInterfaces  attach to every interface with a global IPv6 address (default false)
  removeQdisc         remove the clsact qdisc at exit if scitagd created it (default true)
  programPath         a compiled object to load instead of the shipped one
  markingStrategy     label | hopByHop | destination | hopByHopDestination (default label)
  matchAll            mark every IPv6 flow with matchExperiment/matchActivity (default false)
  debugMode           accepted
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

    def __post_init__(self) -> None:
        folded = {s.lower(): s for s in STRATEGIES}
        s = folded.get(self.marking_strategy.lower())
        if s is None:
            raise ValueError(f"markingStrategy {self.marking_strategy!r}: expected one of "
                             + ", ".join(STRATEGIES))
        self.marking_strategy = s
        for name in self.target_interfaces:
            if not name or len(name) > 15 or "/" in name or " " in name:
                raise ValueError(f"targetInterfaces {name!r}: expected an interface name "
                                 "(1-15 characters, no '/' or spaces)")
