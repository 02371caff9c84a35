# SPDX-License-Identifier: Apache-2.0
"""Config documentation from one source: each config struct's docstring.

A struct's docstring opens with a summary and ends with a `Keys:` block, one entry per YAML key
(`  keyName: text`, continuation lines indented further). The commented sample config
(`scitagd conf --sample`) and the manual page scitagd.yaml(5) are generated from these, and a
test requires an entry for every field and a field for every entry, so the documentation cannot
fall behind the code.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Type, get_args, get_origin

import msgspec
import yaml

__all__ = ["Key", "key_docs", "keys", "sample", "section_doc", "struct_of"]

WIDTH = 100


def key_docs(cls: type) -> Dict[str, str]:
    """keyName -> text from the `Keys:` blocks of `cls` and its bases (the subclass wins)."""
    out: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if "__doc__" in vars(klass) and klass.__doc__:
            out.update(_parse_keys(klass.__doc__))
    return out


def section_doc(cls: type) -> str:
    """The docstring's summary (what precedes `Keys:`), one paragraph per blank line kept."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    head = doc.split("\nKeys:", 1)[0] if "\nKeys:" in doc or doc.startswith("Keys:") else doc
    if head.startswith("Keys:"):
        return ""
    return head.strip()


def _parse_keys(doc: str) -> Dict[str, str]:
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = lines.index("Keys:") + 1
    except ValueError:
        return {}
    out: Dict[str, str] = {}
    indent: Optional[int] = None
    current: Optional[str] = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        name, sep, text = line.strip().partition(": ")
        if depth == indent and sep and name.isidentifier():
            current = name
            out[current] = text.strip()
        elif current is not None and depth > indent:
            out[current] += " " + line.strip()
        else:
            raise ValueError(f"Keys: block: cannot read {line.strip()!r}: expected '  keyName: text'")
    return out


def struct_of(tp: Any) -> Tuple[Optional[Type[msgspec.Struct]], bool, bool]:
    """(struct type, optional, list of it) for a field's annotation; (None, ...) for scalars."""
    optional = type(None) in get_args(tp)
    args = [a for a in get_args(tp) if a is not type(None)] if optional else [tp]
    if len(args) == 1:
        t = args[0]
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            return t, optional, False
        if get_origin(t) in (list, List):
            inner = get_args(t)
            if inner and isinstance(inner[0], type) and issubclass(inner[0], msgspec.Struct):
                return inner[0], optional, True
    return None, optional, False


class Key(NamedTuple):
    path: str  # dotted, e.g. plugins.api.bindPort
    name: str
    doc: str
    default: Any  # msgspec.NODEFAULT when required
    struct: Optional[Type[msgspec.Struct]]
    optional: bool
    is_list: bool


def keys(cls: Type[msgspec.Struct], prefix: str = "") -> Iterator[Key]:
    """Every key of `cls`, depth first, with its documentation and default."""
    docs = key_docs(cls)
    for f in msgspec.structs.fields(cls):
        name = f.encode_name
        path = f"{prefix}.{name}" if prefix else name
        default = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        sub, optional, is_list = struct_of(f.type)
        yield Key(path, name, docs.get(name, ""), default, sub, optional, is_list)
        if sub is not None and not is_list:
            yield from keys(sub, path)


def missing_docs(cls: Type[msgspec.Struct], seen: Optional[set[type]] = None) -> List[str]:
    """Problems: fields without an entry and entries without a field, for `cls` and below."""
    seen = set() if seen is None else seen
    if cls in seen:
        return []
    seen.add(cls)
    docs = key_docs(cls)
    names = [f.encode_name for f in msgspec.structs.fields(cls)]
    out = [f"{cls.__module__}.{cls.__qualname__}: key {n!r} has no entry in its Keys: block"
           for n in names if not docs.get(n)]
    out += [f"{cls.__module__}.{cls.__qualname__}: Keys: entry {n!r} names no field"
            for n in docs if n not in names]
    if not section_doc(cls):
        out.append(f"{cls.__module__}.{cls.__qualname__}: no summary before Keys:")
    for f in msgspec.structs.fields(cls):
        sub = struct_of(f.type)[0]
        if sub is not None:
            out += missing_docs(sub, seen)
    return out


# ---- the commented sample -------------------------------------------------------------------

def sample(cls: Type[msgspec.Struct], enabled: frozenset[str], header: str,
           values: Optional[Dict[str, Any]] = None, skip: frozenset[str] = frozenset()) -> str:
    """A YAML file with every key of `cls`, its default and its documentation as comments.

    Sections named in `enabled` (dotted paths) are active; other optional sections are written
    commented out, ready to enable by removing one `# ` per line. `values` replaces defaults
    (path -> value) where a packaged file differs from the built-in default on purpose.
    """
    out: List[str] = [f"## {line}".rstrip() for line in header.strip().splitlines()]
    out.append("")
    _emit(cls, "", 0, False, enabled, values or {}, skip, out)
    return "\n".join(out).rstrip() + "\n"


def _emit(cls: Type[msgspec.Struct], prefix: str, depth: int, off: bool, enabled: frozenset[str],
          values: Dict[str, Any], skip: frozenset[str], out: List[str]) -> None:
    pad = "  " * depth
    docs = key_docs(cls)
    for f in msgspec.structs.fields(cls):
        name = f.encode_name
        path = f"{prefix}.{name}" if prefix else name
        if path in skip:
            continue
        default = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        value = values.get(path, default)
        sub, optional, is_list = struct_of(f.type)
        doc = docs.get(name, "")
        if depth == 0 and out and out[-1] != "":
            out.append("")
        out.extend(_comment(doc, pad))
        if sub is not None and not is_list:
            child_off = off or (optional and path not in enabled)
            out.append(_line(pad, child_off, f"{name}:"))
            _emit(sub, path, depth + 1, child_off, enabled, values, skip, out)
            continue
        if is_list and sub is not None:
            out.append(_line(pad, off, f"{name}: {_scalar(value)}"))
            out.append(f"{pad}##   each item:")
            item_docs = key_docs(sub)
            for g in msgspec.structs.fields(sub):
                req = " (required)" if g.required else ""
                out.extend(_comment(f"{g.encode_name}{req}: {item_docs.get(g.encode_name, '')}",
                                    pad + "##     ", first=""))
            continue
        if value is None or value is msgspec.NODEFAULT:
            out.append(f"{pad}# {name}:")
        else:
            out.append(_line(pad, off, f"{name}: {_scalar(value)}"))


def _line(pad: str, off: bool, text: str) -> str:
    return f"{pad}# {text}" if off else f"{pad}{text}"


def _comment(text: str, pad: str, first: str = "## ") -> List[str]:
    if not text:
        return []
    lead = pad + first if first else pad
    return textwrap.wrap(text, width=WIDTH, initial_indent=lead,
                         subsequent_indent=lead if first else lead + "  ",
                         break_on_hyphens=False, break_long_words=False)


def _scalar(v: Any) -> str:
    if isinstance(v, msgspec.Struct):
        v = msgspec.to_builtins(v)
    text: str = yaml.safe_dump(v, default_flow_style=True, width=1 << 16).strip()
    return text[:-3].strip() if text.endswith("...") else text  # PyYAML ends a bare scalar document so
