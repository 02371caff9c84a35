# SPDX-License-Identifier: Apache-2.0
"""The config documentation, the samples and the manual pages come from the code and stay true."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Type

import msgspec
import pytest

from scitagd import confdoc, docgen
from scitagd.collector import conf as cconf
from scitagd.config import Config, dump, load_text

REPO = Path(__file__).parents[2]


def roots() -> List[Type[msgspec.Struct]]:
    from scitagd.flowexport.conf import IpfixConfig, NetflowConfig, SflowConfig

    return [Config, cconf.CollectorFile, IpfixConfig, NetflowConfig, SflowConfig]


@pytest.mark.parametrize("root", roots(), ids=lambda c: c.__name__)
def test_every_key_documented(root: Type[msgspec.Struct]) -> None:
    assert confdoc.missing_docs(root) == []


def test_missing_docs_finds_gaps() -> None:
    class Bad(msgspec.Struct, rename="camel"):
        """Something.

        Keys:
          fooBar: documented.
          gone: names no field.
        """

        foo_bar: int = 1
        undocumented_key: int = 2

    problems = confdoc.missing_docs(Bad)
    assert any("'undocumentedKey' has no entry" in p for p in problems)
    assert any("'gone' names no field" in p for p in problems)


def test_keys_block_continuation_and_errors() -> None:
    docs = confdoc._parse_keys("""Summary.

    Keys:
      a: first line
        continued here.
      b: second.
    """)
    assert docs == {"a": "first line continued here.", "b": "second."}
    with pytest.raises(ValueError, match="cannot read 'not a key line'"):
        confdoc._parse_keys("S.\n\nKeys:\n  a: x\nnot a key line\n")


def test_committed_documents_are_current() -> None:
    stale = [str(p.relative_to(REPO)) for p, text in docgen.files(REPO).items()
             if not p.exists() or p.read_text() != text]
    assert stale == [], f"regenerate with `python -m scitagd.docgen --write`: {stale}"


def _uncomment(text: str) -> str:
    """Every commented-out setting switched on: what an admin does line by line."""
    out = []
    for line in text.splitlines():
        body = line.lstrip()
        if body.startswith("# ") and not body.startswith("##"):
            indent = line[:len(line) - len(body)]
            line = indent + body[2:]
        out.append(line)
    return "\n".join(out) + "\n"


def _section_paths(root: Type[msgspec.Struct]) -> List[str]:
    return [k.path for k in confdoc.keys(root) if k.struct is not None and not k.is_list and k.optional]


def _get(conf: Any, path: str) -> Any:
    for part in path.split("."):
        if conf is None:
            return None
        conf = getattr(conf, {f.encode_name: f.name for f in msgspec.structs.fields(conf)}[part])
    return conf


def _scalars(section: msgspec.Struct) -> Any:
    """The section's own values, its optional subsections left out (they are checked on their own)."""
    subsections = {f.encode_name for f in msgspec.structs.fields(section)
                   if confdoc.struct_of(f.type)[0] is not None and not confdoc.struct_of(f.type)[2]}
    return {k: v for k, v in msgspec.to_builtins(section).items() if k not in subsections}


def test_daemon_sample_is_the_defaults_with_the_packaged_sections() -> None:
    text = docgen.daemon_sample()
    conf = load_text(text, "sample")
    expected = load_text("plugins:\n  api:\n  namedPipe:\n    pipePath: /run/scitagd/flowd\n"
                         "backends:\n  firefly:\n  prometheus:\n")
    assert dump(conf) == dump(expected)
    on = [p for p in _section_paths(Config) if _get(conf, p) is not None]
    assert sorted(on) == sorted(docgen.DAEMON_ENABLED)
    for line in text.splitlines():  # prose is ## and wrapped; settings fit on a line
        assert line.startswith(("#", " ", "")) and (len(line) <= 100 or "[" in line), line


def test_daemon_sample_uncommented_turns_every_section_on_with_defaults() -> None:
    conf = load_text(_uncomment(docgen.daemon_sample()), "uncommented")
    missing = [p for p in _section_paths(Config) if p != "collector" and _get(conf, p) is None]
    assert missing == []
    # each section equals its own defaults: the sample shows the real default of every key
    for path in _section_paths(Config):
        if path == "collector":
            continue
        section = _get(conf, path)
        fresh = type(section)()
        if path == "plugins.namedPipe":
            fresh.pipe_path = "/run/scitagd/flowd"
        assert _scalars(section) == _scalars(fresh), path


def test_collector_sample_is_the_defaults() -> None:
    text = docgen.collector_sample()
    assert msgspec.to_builtins(cconf.load_text(text, "sample")) == msgspec.to_builtins(cconf.load_text(""))
    on = cconf.load_text(_uncomment(text), "uncommented").collector
    for path in _section_paths(cconf.CollectorConfig):
        section = _get(on, path)
        assert section is not None, path
        assert _scalars(section) == _scalars(type(section)()), path


def test_cli_sample_and_redaction(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "scitagd", "conf"]
    out = subprocess.run([*run, "--sample"], capture_output=True, text=True, check=True).stdout
    assert out == docgen.daemon_sample()
    out = subprocess.run([*run, "--sample", "--collector"], capture_output=True, text=True, check=True).stdout
    assert out == docgen.collector_sample()
    secret = "s3cret-token-0123456789abcdef"
    f = tmp_path / "c.yaml"
    f.write_text(f"plugins:\n  api:\n    token: {secret}\n")
    p = subprocess.run([*run, "--config", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert secret not in p.stdout and "token: (hidden)" in p.stdout


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed (apt-get install groff-base)")
@pytest.mark.parametrize("page", ["scitagd.8", "scitagd.yaml.5"])
def test_man_pages_render_without_warnings(page: str) -> None:
    path = REPO / "packaging" / "man" / page
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=100n", str(path)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    text = re.sub(r".\x08", "", p.stdout)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if page == "scitagd.yaml.5":
        for root in (Config, cconf.CollectorConfig):
            for k in confdoc.keys(root):
                assert k.name in text, k.path
    else:
        from scitagd.cli import parser

        for name, _, _ in docgen._commands(parser()):
            assert f"scitagd {name}" in text, name
