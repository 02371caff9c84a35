# SPDX-License-Identifier: Apache-2.0
"""Experiment and activity names: bundled snapshot, optional URL with cache and refresh.

Ids are the truth on the wire; names are for people. Unknown ids are valid (ids changed over
the years and old ones are still in flight), so lookups return None rather than fail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import msgspec

from .confbase import RegistryConfig
from .errors import RegistryError

__all__ = ["TAG_LABELS", "Activity", "Experiment", "Registry", "RegistryDoc", "RegistryHolder", "fold"]

log = logging.getLogger("scitagd.registry")

_FOLD = re.compile(r"[\s_\-]+")


def fold(name: str) -> str:
    """'Data Challenge' == 'data_challenge' == 'DataChallenge'."""
    return _FOLD.sub("", name).casefold()


# The labels of every per-experiment/activity metric, daemon and collector alike.
TAG_LABELS = ["experiment", "activity", "experiment_id", "activity_id"]


class Activity(msgspec.Struct, rename="camel"):
    activity_name: str
    activity_id: int


class Experiment(msgspec.Struct, rename="camel"):
    exp_name: str
    exp_id: int
    activities: List[Activity]


class RegistryDoc(msgspec.Struct):
    experiments: List[Experiment]
    version: int = 1
    modified: Optional[str] = None


class Registry:
    """An immutable view of one registry document, indexed for lookups both ways."""

    def __init__(self, doc: RegistryDoc, origin: str, loaded_at: float | None = None) -> None:
        if not doc.experiments:
            raise RegistryError("registry has no experiments")
        self.doc = doc
        self.origin = origin
        self.loaded_at = loaded_at if loaded_at is not None else time.time()
        self._exp_by_id: Dict[int, Experiment] = {}
        self._exp_by_name: Dict[str, Experiment] = {}
        self._act_by_id: Dict[Tuple[int, int], str] = {}
        self._act_by_name: Dict[Tuple[int, str], int] = {}
        for exp in doc.experiments:
            self._exp_by_id[exp.exp_id] = exp
            self._exp_by_name[fold(exp.exp_name)] = exp
            for act in exp.activities:
                self._act_by_id[(exp.exp_id, act.activity_id)] = act.activity_name
                self._act_by_name[(exp.exp_id, fold(act.activity_name))] = act.activity_id

    @classmethod
    def from_bytes(cls, data: bytes, origin: str, loaded_at: float | None = None) -> Registry:
        try:
            doc = msgspec.json.decode(data, type=RegistryDoc)
        except msgspec.DecodeError as e:
            raise RegistryError(f"{origin}: not a registry document: {e}") from None
        return cls(doc, origin, loaded_at)

    @classmethod
    def bundled(cls) -> Registry:
        data = resources.files("scitagd").joinpath("data/registry.json").read_bytes()
        reg = cls.from_bytes(data, "bundled")
        reg.loaded_at = reg.modified_ts or reg.loaded_at
        return reg

    @property
    def modified_ts(self) -> float | None:
        if not self.doc.modified:
            return None
        try:
            return datetime.fromisoformat(self.doc.modified.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None

    @property
    def experiments(self) -> List[Experiment]:
        return self.doc.experiments

    def experiment_name(self, exp_id: int) -> str | None:
        e = self._exp_by_id.get(exp_id)
        return e.exp_name if e else None

    def activity_name(self, exp_id: int, act_id: int) -> str | None:
        return self._act_by_id.get((exp_id, act_id))

    def tag_labels(self, exp_id: int, act_id: int) -> List[str]:
        """Metric label values for TAG_LABELS: names where the registry has them, else the id."""
        return [self.experiment_name(exp_id) or str(exp_id), self.activity_name(exp_id, act_id) or str(act_id),
                str(exp_id), str(act_id)]

    def experiment(self, name_or_id: str | int) -> Experiment | None:
        if isinstance(name_or_id, int):
            return self._exp_by_id.get(name_or_id)
        return self._exp_by_name.get(fold(name_or_id))

    def resolve(self, experiment: object, activity: object) -> tuple[int, int]:
        """Turn ids or names into ids. Names must exist; ids need not (their range is checked
        where they are used). Anything but an integer or a string is refused, booleans too
        (`true` is an int to Python)."""
        exp_id = self._resolve_exp(experiment)
        act_id = self._resolve_act(exp_id, activity)
        return exp_id, act_id

    def _resolve_exp(self, value: object) -> int:
        as_int = _as_int("experiment", value)
        if as_int is not None:
            return as_int
        e = self._exp_by_name.get(fold(str(value)))
        if e is None:
            raise RegistryError(
                f"unknown experiment name {_show(value)}: expected an id or one of "
                + ", ".join(x.exp_name for x in self.experiments), field="experiment"
            )
        return e.exp_id

    def _resolve_act(self, exp_id: int, value: object) -> int:
        as_int = _as_int("activity", value)
        if as_int is not None:
            return as_int
        a = self._act_by_name.get((exp_id, fold(str(value))))
        if a is None:
            e = self._exp_by_id.get(exp_id)
            known = ", ".join(repr(x.activity_name) for x in e.activities) if e else "none known"
            raise RegistryError(
                f"unknown activity name {_show(value)} for experiment {exp_id}: expected an id or one of "
                + known, field="activity"
            )
        return a


_MAX_ID_DIGITS = 9  # far above any id; int() of a 5,000-digit string would raise instead


def _as_int(field: str, value: object) -> int | None:
    """The id in `value`, or None when it is a name. Refuses other types with a RegistryError."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RegistryError(f"{_show(value)} ({type(value).__name__}): expected an id (integer) or a name "
                            "(string)", reason="bad_type", field=field)
    if isinstance(value, int):
        return value
    s = value.strip()
    if s.isascii() and s.isdigit():
        if len(s) > _MAX_ID_DIGITS:
            raise RegistryError(f"{_show(value)}: id out of range", reason="bad_" + field, field=field)
        return int(s)
    if not s or len(s) > 128:
        raise RegistryError(f"{_show(value)}: expected an id or a name of 1..128 characters",
                            reason="unknown_name", field=field)
    return None


def _show(value: object, n: int = 60) -> str:
    """repr() cut to `n` characters: error messages and logs stay bounded whatever came in."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


class RegistryHolder:
    """Keeps the last good registry; a failed refresh never replaces it."""

    def __init__(self, conf: RegistryConfig | None = None) -> None:
        self.conf = conf or RegistryConfig()
        self.current = Registry.bundled()
        self.refresh_failures = 0
        self.refresh_ok = 0
        if conf is not None and conf.url:
            self._load_cache()

    def reconfigure(self, conf: RegistryConfig) -> None:
        """A new `registry:` section (reload): the cache it names is read; refresh() fetches."""
        self.conf = conf
        if not conf.url:
            self.current = Registry.bundled()
        else:
            self._load_cache()

    def _load_cache(self) -> None:
        path = Path(self.conf.cache_file)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("registry cache unreadable path=%s error=%r", path, str(e))
            return
        try:
            self.current = Registry.from_bytes(data, f"cache:{path}", path.stat().st_mtime)
            log.info("registry loaded from cache path=%s experiments=%d", path,
                     len(self.current.experiments))
        except RegistryError as e:
            log.warning("registry cache ignored, keeping bundled snapshot: %s", e)

    async def refresh(self) -> bool:
        url = self.conf.url
        if not url:
            return False
        try:
            data = await _fetch(url, self.conf.timeout)
            reg = Registry.from_bytes(data, url)
        except (OSError, asyncio.TimeoutError, RegistryError) as e:
            self.refresh_failures += 1
            log.warning("registry refresh failed, keeping %s url=%s error=%r",
                        self.current.origin, url, str(e) or type(e).__name__)
            return False
        except Exception as e:  # aiohttp raises its own hierarchy (ClientError etc.)
            self.refresh_failures += 1
            log.warning("registry refresh failed, keeping %s url=%s error=%r",
                        self.current.origin, url, f"{type(e).__name__}: {e}")
            return False
        self.current = reg
        self.refresh_ok += 1
        self._write_cache(data)
        log.info("registry refreshed url=%s experiments=%d modified=%s", url,
                 len(reg.experiments), reg.doc.modified)
        return True

    def _write_cache(self, data: bytes) -> None:
        path = Path(self.conf.cache_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".registry.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("registry cache not written path=%s error=%r", path, str(e))

    async def run_refresher(self) -> None:
        if not self.conf.url:
            return
        while True:
            await self.refresh()
            await asyncio.sleep(self.conf.refresh_interval)


async def _fetch(url: str, timeout: float) -> bytes:
    if url.startswith("file://"):
        return await asyncio.get_running_loop().run_in_executor(
            None, Path(url[len("file://"):]).read_bytes
        )
    import aiohttp

    to = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=to) as s, s.get(url) as r:
        if r.status != 200:
            raise RegistryError(f"HTTP {r.status} from {url}")
        body = await r.read()
        if len(body) > 4 << 20:
            raise RegistryError(f"{url}: document of {len(body)} bytes exceeds 4 MiB")
        return body
