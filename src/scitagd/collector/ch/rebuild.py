# SPDX-License-Identifier: Apache-2.0
"""Per-minute and per-day traffic, rebuilt per start day from the raw fireflies.

Why not materialized views: a firefly's contribution is the increase of its flow's running
total, which depends on the flow's other fireflies; they may come later, through another
receiver, or twice. An insert-time view sees one block, and a sum cannot drop duplicates, so
no view can keep exact sums. A rebuild can: it is one function (attribution.contributions, here
in SQL) of the set of fireflies of the day's flows, so order, receivers and duplicates do not
matter, and running it again is harmless (the day's partition is swapped in whole with REPLACE
PARTITION). Days are rebuilt when `dirty` says a firefly arrived since their last rebuild
(with a margin for inserts still in flight when the rebuild read).
"""

from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Tuple

from ..attribution import CAP_MINUTES, METHODS, POINT
from .client import Client, query
from .schema import REBUILT, _ident, plain_table

log = logging.getLogger("scitagd.collector.ch")

IN_FLIGHT = 60  # seconds an insert may take between now() in dirty_mv and being readable
_KEY = "start, start_frac, proto, src, sport, dst, dport, exp, act"
_MONO = "arrayAll((a, b) -> a <= b, arrayPopBack(mxs), arrayPopFront(mxs))"
_CUMMAX = "arrayMap(i -> arrayReduce('max', arraySlice(mxs, 1, i)), arrayEnumerate(mxs))"


def _flow_arrays(db: str, day: int, monotone: bool) -> str:
    """One row per flow: start minute m0, report minutes ms (ascending), running maximum cm.

    Monotone flows (the rule) take their per-minute maxima as they are; the others pay for an
    O(n^2) running maximum (18.16 has no arrayFold), in a second pass over only them."""
    return f"""
SELECT {_KEY}, m0, arraySort(groupArray(m)) AS ms,
  arraySort((x, k) -> k, groupArray(mx), groupArray(m)) AS mxs,
  {"mxs" if monotone else _CUMMAX} AS cm
FROM (
  SELECT {_KEY}, intDiv(toUInt64(start) * 1000000 + start_frac, 60000000) AS m0,
    greatest(intDiv(t, 60000000), m0) AS m, max(sent + received) AS mx
  FROM {db}.fireflies WHERE toYYYYMMDD(start) = {day}
  GROUP BY {_KEY}, m0, m
) GROUP BY {_KEY}, m0 HAVING {"" if monotone else "NOT "}{_MONO}"""


def contributions_sql(db: str, day: int, method: str, monotone: bool, cap: int = CAP_MINUTES) -> str:
    """(day, m, src, dst, exp, act, b, f): bytes b in minute m, f = 1 in the start minute."""
    arrays = _flow_arrays(db, day, monotone)
    incs = "arrayMap((c, p) -> toUInt64(c - p), cm, arrayPushFront(arrayPopBack(cm), toUInt64(0)))"
    if method == POINT:
        return f"""
SELECT day, m, src, dst, exp, act, b, f FROM (
  SELECT toDate(start) AS day, src, dst, exp, act,
    arrayPushFront(ms, m0) AS mss, arrayPushFront({incs}, toUInt64(0)) AS bs,
    arrayPushFront(arrayMap(x -> toUInt64(0), ms), toUInt64(1)) AS fs
  FROM ({arrays})
) ARRAY JOIN mss AS m, bs AS b, fs AS f WHERE b > 0 OR f > 0"""
    # SPREAD: interval i covers minutes lo..m (lo = previous report minute, at most cap back)
    los = f"arrayMap((x, p) -> greatest(p, toUInt64(x - {cap - 1})), ms, arrayPushFront(arrayPopBack(ms), m0))"
    return f"""
SELECT day, lo + k AS m, src, dst, exp, act,
  toUInt64(intDiv(inc, n) + if(k + 1 = n, inc % n, toUInt64(0))) AS b, f
FROM (
  SELECT day, src, dst, exp, act, lo, inc, f, n, arrayJoin(range(n)) AS k FROM (
   SELECT day, src, dst, exp, act, lo, inc, f, toUInt64(mi - lo + 1) AS n FROM (
    SELECT toDate(start) AS day, src, dst, exp, act,
      arrayPushFront(ms, m0) AS mis, arrayPushFront({los}, m0) AS lss,
      arrayPushFront({incs}, toUInt64(0)) AS ins,
      arrayPushFront(arrayMap(x -> toUInt64(0), ms), toUInt64(1)) AS fs
    FROM ({arrays})
  ) ARRAY JOIN mis AS mi, lss AS lo, ins AS inc, fs AS f WHERE inc > 0 OR f > 0)
) WHERE b > 0 OR f > 0"""


class Rebuilder:
    """Rebuilds days of traffic. Runs anywhere (it only reads and swaps partitions); one is
    enough per database (per shard on a cluster); two at once are harmless, each needs its own
    `tag` for its staging tables."""

    def __init__(self, client: Client, database: str, method: str, tag: str = "0",
                 table_suffix: str = "") -> None:
        if method not in METHODS:
            raise ValueError(f"attribution {method!r}: expected one of {', '.join(METHODS)}")
        self.c, self.db, self.method = client, _ident(database), method
        self.tag = _ident("s" + tag)
        self.sfx = table_suffix  # "_local" on a cluster node
        self.in_flight = IN_FLIGHT
        self.rebuilt = 0
        self.seconds = 0.0
        self._staged = False

    def _stage(self) -> None:
        if self._staged:
            return
        db, t = self.db, self.tag
        for name in REBUILT:
            self.c.execute(plain_table(db, name, f"{name}_stage_{t}"))
        self.c.execute(f"CREATE TABLE IF NOT EXISTS {db}.contrib_stage_{t} (day Date, m UInt64, "
                       "src FixedString(16), dst FixedString(16), exp UInt32, act UInt32, b UInt64, f UInt64) "
                       "ENGINE = Memory")
        self._staged = True

    def drop_stage(self) -> None:
        """Drop this rebuilder's staging tables (at the collector's stop: their tag is its own)."""
        if not self._staged:
            return
        for name in (*REBUILT, "contrib"):
            self.c.execute(f"DROP TABLE IF EXISTS {self.db}.{name}_stage_{self.tag}")
        self._staged = False

    def dirty_days(self) -> List[int]:
        """Days (YYYYMMDD) with fireflies newer than their last rebuild, or built another way."""
        db, s = self.db, self.sfx
        ing = {int(d): int(t) for d, t in query(
            self.c, f"SELECT toYYYYMMDD(day), toUInt32(maxMerge(ingested)) FROM {db}.dirty{s} GROUP BY day")}
        built: Dict[int, Tuple[int, str]] = {int(d): (int(b), m) for d, b, m in query(
            self.c, f"SELECT toYYYYMMDD(day), toUInt32(max(built)), argMax(method, built) "
                    f"FROM {db}.rebuilds{s} GROUP BY day")}
        out = []
        for d, t in sorted(ing.items()):
            b = built.get(d)
            if b is None or b[1] != self.method or t >= b[0] - self.in_flight:
                out.append(d)
        return out

    def rebuild_day(self, day: int) -> float:
        self._stage()
        db, t, c, s = self.db, self.tag, self.c, self.sfx
        t0 = time.monotonic()
        snap = int(query(c, "SELECT toUInt32(now())")[0][0])
        c.execute(f"TRUNCATE TABLE {db}.contrib_stage_{t}")
        for name in REBUILT:
            c.execute(f"TRUNCATE TABLE {db}.{name}_stage_{t}")
        for mono in (True, False):  # on a cluster node: the shard's own fireflies
            sql = contributions_sql(db, day, self.method, mono).replace(f"{db}.fireflies ", f"{db}.fireflies{s} ")
            c.execute(f"INSERT INTO {db}.contrib_stage_{t} {sql}")
        cs = f"{db}.contrib_stage_{t}"
        c.execute(f"INSERT INTO {db}.traffic_minute_stage_{t} (day, bucket, exp, act, bytes, flows) "
                  f"SELECT day, toDateTime(m * 60) AS bucket, exp, act, "
                  f"sum(b), sum(f) FROM {cs} GROUP BY day, bucket, exp, act")
        c.execute(f"INSERT INTO {db}.traffic_hour_stage_{t} (day, bucket, exp, act, bytes, flows) "
                  f"SELECT day, toDateTime(intDiv(m, 60) * 3600) AS bucket, "
                  f"exp, act, sum(b), sum(f) FROM {cs} GROUP BY day, bucket, exp, act")
        c.execute(f"INSERT INTO {db}.pairs_day_stage_{t} (day, bucket, exp, act, pair, src, dst, bytes, flows) "
                  f"SELECT day, toDateTime(intDiv(m, 1440) * 86400) AS bucket, exp, act, cityHash64(src, dst), "
                  f"src, dst, sum(b), sum(f) FROM {cs} GROUP BY day, bucket, src, dst, exp, act")
        c.execute(f"INSERT INTO {db}.pairs_total_day_stage_{t} (day, bucket, pair, src, dst, bytes, flows) "
                  f"SELECT day, bucket, pair, src, dst, sum(bytes), sum(flows) "
                  f"FROM {db}.pairs_day_stage_{t} GROUP BY day, bucket, pair, src, dst")
        for name in REBUILT:
            c.execute(f"ALTER TABLE {db}.{name}{s} REPLACE PARTITION {day} FROM {db}.{name}_stage_{t}")
        c.execute(f"TRUNCATE TABLE {db}.contrib_stage_{t}")
        took = time.monotonic() - t0
        c.execute(f"INSERT INTO {db}.rebuilds{s} SELECT toDate(toDateTime('{_ymd(day)} 12:00:00')), "
                  f"toDateTime({snap}), '{self.method}', {took:.3f}")
        self.rebuilt += 1
        self.seconds += took
        log.info("traffic rebuilt day=%d method=%s seconds=%.3f", day, self.method, took)
        return took

    def run_once(self, limit: Optional[int] = None) -> List[int]:
        days = self.dirty_days()[:limit]
        for d in days:
            self.rebuild_day(d)
        return days


def _ymd(day: int) -> str:
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"
