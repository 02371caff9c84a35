# SPDX-License-Identifier: Apache-2.0
"""`scitagd ...`: exit status 0 on success, 2 with one error line for invalid input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import __version__
from .confbase import LOG_LEVELS
from .errors import CommandError, ScitagdError
from .tags import (
    EXPERIMENT_MAX,
    FLOW_LABEL_MASK,
    decode_flow_label,
    decode_scitag,
    encode_flow_label,
    encode_scitag,
    parse_int,
)

if TYPE_CHECKING:
    from .config import Config

__all__ = ["main", "parser"]


def _registry() -> Any:
    from .registry import Registry

    return Registry.bundled()


def tag_info(exp: int, act: int) -> Dict[str, Any]:
    reg = _registry()
    label = encode_flow_label(exp, act) if 1 <= exp <= EXPERIMENT_MAX else None
    return {
        "experiment_id": exp,
        "activity_id": act,
        "experiment": reg.experiment_name(exp),
        "activity": reg.activity_name(exp, act),
        "scitag": encode_scitag(exp, act),
        "flow_label": label,
        "flow_label_mask": FLOW_LABEL_MASK,
    }


def _print_tag(info: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    exp = info["experiment"] or "(not in registry)"
    act = info["activity"] or "(not in registry)"
    print(f"experiment  {info['experiment_id']:>5}  {exp}")
    print(f"activity    {info['activity_id']:>5}  {act}")
    print(f"scitag      {info['scitag']:>5}")
    if info["flow_label"] is None:
        print(f"flow label      -  (experiment above {EXPERIMENT_MAX} does not fit 9 bits)")
    else:
        print(f"flow label  {info['flow_label']:#07x}  (entropy bits 0; mask {FLOW_LABEL_MASK:#07x})")


def cmd_tag_encode(a: argparse.Namespace) -> int:
    exp, act = _registry().resolve(a.experiment, a.activity)
    encode_flow_label(exp, act)  # range checks with their messages
    _print_tag(tag_info(exp, act), a.json)
    return 0


def cmd_tag_decode(a: argparse.Namespace) -> int:
    if a.scitag is not None:
        exp, act = decode_scitag(parse_int(a.scitag))
    else:
        exp, act = decode_flow_label(parse_int(a.flow_label))
    _print_tag(tag_info(exp, act), a.json)
    return 0


def cmd_registry(a: argparse.Namespace) -> int:
    from .registry import Registry

    reg = Registry.bundled()
    if a.config:
        import asyncio

        from .registry import RegistryHolder

        holder = RegistryHolder(_load_conf(a.config).registry)
        if a.refresh and not asyncio.run(holder.refresh()):
            raise CommandError(f"registry: could not refresh from {holder.conf.url}; see the warning above")
        reg = holder.current
    if a.file:
        try:
            with open(a.file, "rb") as f:
                reg = Registry.from_bytes(f.read(), a.file)
        except OSError as err:
            raise CommandError(f"{a.file}: {err.strerror or err}") from None
    if a.action == "list":
        if a.json:
            print(json.dumps([{"id": e.exp_id, "name": e.exp_name,
                               "activities": len(e.activities)} for e in reg.experiments]))
            return 0
        print(f"registry {reg.origin}, modified {reg.doc.modified}")
        for x in reg.experiments:
            print(f"{x.exp_id:>4}  {x.exp_name:<12} {len(x.activities)} activities")
        return 0
    name = a.name
    if name is None:
        raise CommandError("registry show: expected an experiment name or id")
    key: Any = int(name) if name.strip().isdigit() else name
    e = reg.experiment(key)
    if e is None:
        raise CommandError(f"experiment {name!r} is not in the registry (ids not listed are still "
                         "valid on the wire)")
    if a.json:
        print(json.dumps({"id": e.exp_id, "name": e.exp_name, "activities": [
            {"id": x.activity_id, "name": x.activity_name} for x in e.activities]}))
        return 0
    print(f"{e.exp_name} (experiment {e.exp_id})")
    for act in e.activities:
        print(f"{act.activity_id:>4}  {act.activity_name:<28} scitag {encode_scitag(e.exp_id, act.activity_id)}")
    return 0


def _load_conf(path: str) -> Config:
    from .config import load

    return load(path)


def cmd_conf(a: argparse.Namespace) -> int:
    if a.sample:
        from .docgen import collector_sample, daemon_sample

        print(collector_sample() if a.collector else daemon_sample(), end="")
        return 0
    from .confbase import dump

    if a.collector:
        from .collector.conf import load

        path = a.config or DEFAULT_COLLECTOR_CONFIG
        print(dump(load(path)), end="")
        return 0
    from .compat import load_checked

    conf, said = load_checked(*_config_path(a.config))
    for n in said:  # what `run` would warn about, on stderr: stdout stays the YAML
        print(f"scitagd: warning: {n}", file=sys.stderr)
    print(dump(conf), end="")
    return 0


DEFAULT_CONFIG = "/etc/scitagd/scitagd.yaml"


def config_path(given: Optional[str]) -> str:
    """--config, else the site's default file, else flowd-go's (compat.discover)."""
    return _config_path(given)[0]


def _config_path(given: Optional[str]) -> tuple[str, bool]:
    from .compat import FLOWD_GO_CONFIG, discover

    path, flowd_go = discover(given, DEFAULT_CONFIG)
    if given or Path(path).is_file():
        return path, flowd_go
    raise CommandError(f"no --config given and neither {DEFAULT_CONFIG} nor flowd-go's {FLOWD_GO_CONFIG} exists: "
                       "write one (a commented sample: `scitagd conf --sample`; from a flowd or flowd-go file: "
                       "`scitagd config migrate`) or pass --config FILE")


def cmd_run(a: argparse.Namespace) -> int:
    import logging

    from . import logs
    from .compat import load_checked
    from .daemon import run

    path, flowd_go = _config_path(a.config)
    conf, said = load_checked(path, flowd_go)
    logs.setup(a.log_level or conf.logging.level, conf.logging.flow_events)
    log = logging.getLogger("scitagd.config")
    if flowd_go:
        log.warning("no %s: running on flowd-go's configuration path=%s (scitagd reads its keys; `scitagd config "
                    "migrate --from flowd-go %s` writes the scitagd equivalent)", DEFAULT_CONFIG, path, path)
    for n in said:
        log.warning("config key=%s %s", n.key, n.text)
    return run(conf, path)


def cmd_marker(a: argparse.Namespace) -> int:
    from .markercli import clean, status

    try:
        if a.action == "status":
            return status(a.pin_path, a.json, a.tc_priority)
        return clean(a.pin_path, a.tc_priority, a.target_interface)
    except PermissionError as e:
        raise CommandError(str(e)) from None


DEFAULT_COLLECTOR_CONFIG = "/etc/scitagd/collector.yaml"


def cmd_collector(a: argparse.Namespace) -> int:
    from .collector.conf import load, load_text

    path = a.config or (DEFAULT_COLLECTOR_CONFIG if Path(DEFAULT_COLLECTOR_CONFIG).is_file() else None)
    conf = load(path) if path else load_text("")
    cconf = conf.collector
    if getattr(a, "schema", False):
        from .collector.ch.schema import render

        try:
            print(render(a.database or cconf.store.database, a.cluster), end="")
        except ValueError as e:
            raise CommandError(f"collector schema: {e}") from None
        return 0
    if getattr(a, "import_files", False):
        import json as _json

        from .collector.importer import import_files, print_summary

        files = a.files
        if not files:
            raise CommandError("collector import: expected one or more files")
        for f in files:
            if not Path(f).is_file():
                raise CommandError(f"collector import: {f}: no such file")
        s = import_files(cconf, files, progress=not a.quiet, keep=a.keep)
        if a.json:
            print(_json.dumps(s))
        else:
            print_summary(s)
        return 0
    from . import logs
    from .collector.service import run as run_collector
    from .registry import RegistryHolder

    logs.setup(a.log_level or conf.logging.level, False)
    if path is None:
        import logging

        logging.getLogger("scitagd.collector").warning(
            "no --config given and %s does not exist: running on built-in defaults store=%s udp=[%s]:%d http=%s:%d",
            DEFAULT_COLLECTOR_CONFIG, cconf.store.path, ",".join(cconf.udp.bind_addresses), cconf.udp.port,
            cconf.http.bind_address, cconf.http.port)
    return run_collector(cconf, RegistryHolder(conf.registry), path)


def cmd_doctor(a: argparse.Namespace) -> int:
    from .doctor import main as doctor_main

    if a.collector:
        from .collector.conf import load

        return doctor_main(load(a.config or DEFAULT_COLLECTOR_CONFIG), a.json)
    return doctor_main(_load_conf(config_path(a.config)), a.json)


def cmd_config(a: argparse.Namespace) -> int:
    from .migrate import migrate

    sys.stdout.write(migrate(a.source, a.file))
    return 0


def cmd_version(a: argparse.Namespace) -> int:
    from .version import main as version_main

    return version_main(a.json)


def cmd_stun(a: argparse.Namespace) -> int:
    from .stuncli import sample

    return sample(a)


def cmd_demo(a: argparse.Namespace) -> int:
    from .lab.demo import main as demo_main

    return demo_main(a)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scitagd", description="SciTags flow marking daemon")
    p.add_argument("--version", action="version", version=f"scitagd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    tag = sub.add_parser("tag", help="encode and decode tags").add_subparsers(dest="tag_cmd",
                                                                             required=True)
    enc = tag.add_parser("encode", help="experiment and activity (ids or names) to wire forms")
    enc.add_argument("experiment", help="experiment id or registry name")
    enc.add_argument("activity", help="activity id or registry name")
    enc.add_argument("--json", action="store_true", help="one JSON object")
    enc.set_defaults(func=cmd_tag_encode)
    dec = tag.add_parser("decode", help="a scitag or a flow label to experiment and activity")
    g = dec.add_mutually_exclusive_group(required=True)
    g.add_argument("--scitag", metavar="N", help="the scitag integer, decimal or 0x-hex")
    g.add_argument("--flow-label", metavar="N", help="a 20-bit IPv6 flow label, decimal or 0x-hex")
    dec.add_argument("--json", action="store_true", help="one JSON object")
    dec.set_defaults(func=cmd_tag_decode)

    reg = sub.add_parser("registry", help="experiments and activities")
    reg.add_argument("action", choices=["list", "show"], help="list all, or show one experiment's activities")
    reg.add_argument("name", nargs="?", help="with show: an experiment id or name")
    reg.add_argument("--file", metavar="FILE", help="a registry JSON file instead of the bundled snapshot")
    reg.add_argument("--config", metavar="FILE", help="use the registry a daemon with this config uses (its cache)")
    reg.add_argument("--refresh", action="store_true", help="with --config: fetch registry.url now")
    reg.add_argument("--json", action="store_true", help="JSON output")
    reg.set_defaults(func=cmd_registry)

    conf = sub.add_parser("conf", help="print the effective configuration (defaults filled in, tokens "
                          "hidden), or a commented sample")
    conf.add_argument("--config", "--conf", metavar="FILE", help=f"the file to read (default {DEFAULT_CONFIG}, "
                      f"else flowd-go's /etc/flowd-go/conf.yaml; with --collector {DEFAULT_COLLECTOR_CONFIG}); "
                      "--conf is flowd-go's name")
    conf.add_argument("--collector", action="store_true", help="the collector's config instead of the daemon's")
    conf.add_argument("--sample", action="store_true", help="print a commented config with every key, its "
                      "default and what it does (what the packages install in /etc/scitagd)")
    conf.set_defaults(func=cmd_conf)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "--conf", metavar="FILE", help=f"the YAML configuration (default {DEFAULT_CONFIG}, "
                     "else flowd-go's /etc/flowd-go/conf.yaml; --conf is flowd-go's name)")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="overrides logging.level (warn and trace as in "
                     "flowd-go: trace is debug)")
    run.set_defaults(func=cmd_run)

    mk = sub.add_parser("marker", help="the eBPF marker: what is attached, counters; clean up")
    mk.add_argument("action", choices=["status", "clean"], help="status: interfaces, filters, maps and "
                    "counters; clean: detach and unpin what a stopped or killed daemon left")
    mk.add_argument("--pin-path", metavar="DIR", default="/sys/fs/bpf/scitagd", help="backends.marker.pinPath")
    mk.add_argument("--tc-priority", metavar="N", type=int, default=1, help="backends.marker.tcPriority")
    mk.add_argument("--json", action="store_true", help="JSON output")
    mk.add_argument("--target-interface", metavar="IF", action="append", help="with clean: only these interfaces "
                    "(flowd-go's option; the pinned maps stay)")
    mk.add_argument("--remove-qdisc", metavar="BOOL", help="flowd-go's option, accepted: a clsact qdisc is removed "
                    "only if scitagd created it and no other filter uses it")
    mk.set_defaults(func=cmd_marker)

    col = sub.add_parser("collector", help="run the firefly collector; `collector import FILE...` "
                         "loads archives")
    col.add_argument("--config", metavar="FILE", help=f"YAML with a collector: section (default "
                     f"{DEFAULT_COLLECTOR_CONFIG} if it exists, else built-in defaults, said at start)")
    col.add_argument("--log-level", choices=LOG_LEVELS, help="overrides logging.level")
    col.set_defaults(func=cmd_collector, args=[], json=False, quiet=False, keep=False, log_level=None)
    colsub = col.add_subparsers(dest="collector_cmd", metavar="{import,schema}")
    imp = colsub.add_parser("import", help="load syslog archives of fireflies (.gz or plain)")
    imp.add_argument("files", nargs="+", metavar="FILE", help="archives, one firefly per line")
    imp.add_argument("--config", metavar="FILE", help="YAML with a collector: section")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.add_argument("--keep", action="store_true", help="exempt the imported time range from retention "
                     "(archives older than collector.store.retentionDays)")
    imp.set_defaults(func=cmd_collector, import_files=True)
    sch = colsub.add_parser("schema", help="print the ClickHouse DDL (collector.store.kind: clickhouse)")
    sch.add_argument("--config", metavar="FILE", help="YAML with a collector: section (its store.database)")
    sch.add_argument("--database", metavar="DB", help="database name (default: collector.store.database, "
                     "scitagd)")
    sch.add_argument("--cluster", metavar="NAME", help="a cluster's layout: Replicated*MergeTree <table>_local "
                     "tables and Distributed tables over them, to run on every node")
    sch.set_defaults(func=cmd_collector, schema=True)

    doc = sub.add_parser("doctor", help="check this host against the config: kernel, BTF, bpffs, cgroup v2, "
                         "libbpf, capabilities, interfaces, sysctls, registry cache, listeners, collectors")
    doc.add_argument("--config", metavar="FILE", help=f"the YAML configuration (default {DEFAULT_CONFIG}, with "
                     f"--collector {DEFAULT_COLLECTOR_CONFIG})")
    doc.add_argument("--collector", action="store_true", help="check a collector host instead: receive buffers, "
                     "listeners, the store's directory and free disk, the registry cache")
    doc.add_argument("--json", action="store_true", help="JSON output")
    doc.set_defaults(func=cmd_doctor)

    cfg = sub.add_parser("config", help="configuration tools: `config migrate --from flowd-go|flowd FILE`")
    cfgsub = cfg.add_subparsers(dest="config_cmd", required=True)
    mig = cfgsub.add_parser("migrate", help="print the scitagd YAML equivalent to a flowd-go or python flowd "
                            "configuration, with comments where scitagd differs")
    mig.add_argument("--from", dest="source", required=True, choices=["flowd-go", "flowd"],
                     help="flowd-go's YAML (/etc/flowd-go/conf.yaml) or python flowd's flowd.cfg (read, never run)")
    mig.add_argument("file", help="the configuration file to migrate")
    mig.set_defaults(func=cmd_config)

    ver = sub.add_parser("version", help="version, commit, eBPF object hashes, libbpf, kernel")
    ver.add_argument("--json", action="store_true", help="JSON output")
    ver.set_defaults(func=cmd_version)

    st = sub.add_parser("stun", help="this host's public addresses as backends.firefly.stun finds them")
    st.add_argument("action", choices=["sample"])
    st.add_argument("--stun-server", action="append", metavar="HOST:PORT",
                    help="a STUN server to ask (repeatable; default: the config's, else flowd-go's public ones)")
    st.add_argument("--http-server", action="append", metavar="URL",
                    help="an HTTP echo to ask (repeatable; default: the config's, else flowd-go's public ones)")
    st.add_argument("--interface", action="append", metavar="IF", help="also map this interface's addresses")
    st.add_argument("--timeout", type=float, help="seconds per server (default 5)")
    st.add_argument("--config", metavar="FILE", help="take servers, interfaces and manualMapping from this config")
    st.add_argument("--json", action="store_true", help="JSON output")
    st.set_defaults(func=cmd_stun)

    demo = sub.add_parser("demo", help="a self-contained demonstration on loopback (and, as root, "
                          "network namespaces); nothing leaves the machine")
    demo.add_argument("--keep", action="store_true", help="leave the daemon running at the end")
    demo.set_defaults(func=cmd_demo)
    return p




def main(argv: Optional[List[str]] = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    try:
        return int(a.func(a))
    except ScitagdError as e:
        print(f"scitagd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
