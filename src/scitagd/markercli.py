# SPDX-License-Identifier: Apache-2.0
"""`scitagd marker status|clean`: look at and remove what the marker left in the kernel."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import BpfError, CommandError

__all__ = ["clean", "status"]


def _ours(priority: int) -> List[Dict[str, Any]]:
    from .bpf import loader

    out = []
    for ifindex, name in socket.if_nameindex():
        prog_id = loader.query(ifindex, priority)
        if prog_id is None:
            continue
        prog = loader.prog_name(prog_id)
        if prog.startswith("scitagd_"):
            out.append({"interface": name, "ifindex": ifindex, "program": prog, "prog_id": prog_id})
    return out


def status(pin_path: str, as_json: bool, priority: int = 1) -> int:
    from .bpf import loader
    from .registry import Registry

    try:
        maps = loader.Maps.from_pins(Path(pin_path))
    except BpfError as e:
        raise CommandError(f"no marker maps at {pin_path} ({e.strerror}): is scitagd running "
                             "with backends.marker?") from None
    try:
        strategy, match_all, mexp, mact = maps.config()
        entries = maps.count_flows()
        marked = maps.marked()
        unmarked = maps.unmarked()
    finally:
        maps.close()
    ifs = _ours(priority)
    names = {i["ifindex"]: i["interface"] for i in ifs}
    reg = Registry.bundled()
    counters = [{
        "interface": names.get(ifindex) or _ifname(ifindex), "experiment_id": exp, "activity_id": act,
        "experiment": reg.experiment_name(exp), "activity": reg.activity_name(exp, act),
        "packets": p, "bytes": b} for (ifindex, exp, act), (p, b) in sorted(marked.items())]
    doc = {"pin_path": pin_path, "strategy": strategy, "match_all": match_all,
           "match": [mexp, mact] if match_all else None, "map_entries": entries,
           "interfaces": ifs, "marked": counters, "unmarked": unmarked}
    if as_json:
        print(json.dumps(doc))
        return 0
    print(f"strategy     {strategy}" + (f" (matchAll {mexp}/{mact})" if match_all else ""))
    print(f"map entries  {entries} (two per flow)   pins {pin_path}")
    print("interfaces   " + (", ".join(f"{i['interface']} ({i['program']}, prog id {i['prog_id']})"
                                        for i in ifs) or "none attached"))
    print("marked")
    for c in counters:
        tag = f"{c['experiment'] or c['experiment_id']}/{c['activity'] or c['activity_id']}"
        print(f"  {c['interface']:<12} {tag:<36} {c['packets']:>12} packets {c['bytes']:>16} bytes")
    print("unmarked     " + ", ".join(f"{k}={v}" for k, v in unmarked.items()))
    return 0


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return str(ifindex)


def clean(pin_path: str, priority: int = 1, interfaces: Optional[List[str]] = None) -> int:
    """Detach our filters, remove clsact qdiscs we created (if nobody else uses them), unpin.
    `interfaces` (flowd-go's --target-interface): only those, and the pinned maps stay."""
    from .bpf import loader

    pin = Path(pin_path)
    state_path = loader.state_file(pin)
    state = loader.read_state(state_path)
    for i in _ours(priority):
        if interfaces and i["interface"] not in interfaces:
            continue
        loader.detach(i["ifindex"], priority)
        print(f"detached {i['interface']} (prog id {i['prog_id']})")
    for name, st in state.items():
        if interfaces and name not in interfaces:
            continue
        try:
            ifindex = socket.if_nametoindex(name)
        except OSError:
            continue
        if st.get("owns_qdisc") and st.get("ifindex") == ifindex:
            if loader.other_filters(ifindex, priority) == 0:
                loader.remove_qdisc(ifindex)
                print(f"removed clsact qdisc on {name}")
            else:
                print(f"kept clsact qdisc on {name}: other filters use it")
    if interfaces:
        for name in interfaces:
            state.pop(name, None)
        loader.write_state(state, state_path)
        return 0
    if pin.is_dir():
        for f in pin.iterdir():
            f.unlink()
        pin.rmdir()
        print(f"unpinned {pin}")
    state_path.unlink(missing_ok=True)
    return 0
