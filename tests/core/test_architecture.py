# SPDX-License-Identifier: Apache-2.0
"""The shape the code is meant to keep: no import circles, config loading that loads no component,
a contracts module that knows nothing of the daemon, and start-up imports kept lean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import scitagd

PKG = Path(scitagd.__file__).parent


def _modules() -> Dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.stmt, package: str) -> List[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        up = package.split(".")
        up = up[:len(up) - node.level + 1]
        base = ".".join(up + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _imports(name: str, path: Path, modules: Dict[str, Path], top_level_only: bool = True) -> Set[str]:
    """scitagd modules `name` imports: those run at import time (module level, outside
    TYPE_CHECKING), or with top_level_only=False every import anywhere in the file."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if top_level_only:
        nodes: List[ast.stmt] = []
        todo = list(tree.body)
        while todo:
            node = todo.pop(0)
            if isinstance(node, ast.If) and not _is_type_checking(node):
                todo += node.body + node.orelse
            elif isinstance(node, ast.Try):
                todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                nodes.append(node)
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return {t for n in nodes for t in _targets(n, package) if t in modules and t != name}


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    cycles: List[List[str]] = []
    state: Dict[str, int] = {}
    stack: List[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_components_knows_nothing_of_the_daemon() -> None:
    modules = _modules()
    imported = _imports("scitagd.components", modules["scitagd.components"], modules, top_level_only=False)
    assert not {m for m in imported if m.startswith(("scitagd.daemon", "scitagd.wiring"))}, imported


def _loaded_after(code: str) -> Set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout.split()
    return set(out)


CONF_MODULES = {"scitagd", "scitagd.config", "scitagd.confbase", "scitagd.errors", "scitagd.netutil",
                "scitagd.sources", "scitagd.sources.conf", "scitagd.sinks", "scitagd.sinks.conf",
                "scitagd.enrich", "scitagd.enrich.conf"}


def test_loading_a_config_loads_no_component(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("plugins: {api: {}, namedPipe: {pipePath: /tmp/x}, firefly: {}, watcher: {}}\n"
                    "backends: {marker: {}, firefly: {}, prometheus: {}}\nenrichers: {netlink: {}, skops: {}}\n"
                    "collector: {udp: {port: 1}}\n")
    loaded = _loaded_after(f"from scitagd.config import load\nload({str(conf)!r})")
    mine = {m for m in loaded if m.startswith("scitagd")}
    assert mine <= CONF_MODULES, f"config loading imported {sorted(mine - CONF_MODULES)}"
    assert not {m for m in loaded if m.startswith(("aiohttp", "prometheus_client", "pyroute2"))}
    coll = _loaded_after(f"from scitagd.collector.conf import load\nload({str(conf)!r})")
    extra = {m for m in coll if m.startswith("scitagd")} - CONF_MODULES - {
        "scitagd.collector", "scitagd.collector.conf", "scitagd.flowexport", "scitagd.flowexport.conf"}
    assert not extra, f"collector config loading imported {sorted(extra)}"
    assert "scitagd.config" not in coll, "the collector's config went through the daemon's tree"


def test_cli_commands_that_need_no_http_do_not_import_it(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("plugins: {firefly: {}}\nbackends: {firefly: {}}\n")
    for argv in (["tag", "encode", "atlas", "1"], ["conf", "--config", str(conf)]):
        loaded = _loaded_after("import contextlib, io\nfrom scitagd.cli import main\n"
                               f"with contextlib.redirect_stdout(io.StringIO()): main({argv!r})")
        assert not {m for m in loaded if m.startswith(("aiohttp", "pyroute2"))}, argv


def test_relay_daemon_imports_no_http_and_no_pyroute2() -> None:
    """A daemon with only the firefly source and sink must not pay for aiohttp or pyroute2
    (~250 ms each at start-up): build it, start nothing, look at what got imported."""
    code = ("from scitagd.config import load_text\nfrom scitagd.daemon import Daemon\n"
            "Daemon(load_text('plugins: {firefly: {bindPort: 1}}\\nbackends: {firefly: {}}'))")
    loaded = _loaded_after(code)
    assert not {m for m in loaded if m.startswith(("aiohttp", "pyroute2", "prometheus_client"))}
