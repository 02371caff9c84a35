# SPDX-License-Identifier: Apache-2.0
"""Writes the Grafana dashboards (scitagd-collector.json, scitagd-daemon.json) from the panel
lists below: `python grafana/generate.py`. Both use a datasource variable (imported with an
`${DS_PROMETHEUS}` input), an instance filter applied to every query, and stable panel ids, so
a dashboard re-imported over an edited one keeps its panels. tests check the metric names
against what the daemon and the collector export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).parent
DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, width, height, [(expr, legend)], stacked)
Panel = Tuple[str, str, int, int, List[Tuple[str, str]], bool]


def dashboard(uid: str, title: str, job_metric: str, extra_vars: List[Dict[str, Any]],
              panels: List[Panel]) -> Dict[str, Any]:
    out_panels = []
    x = y = 0
    row_h = 0
    for i, (ptitle, unit, w, h, targets, stacked) in enumerate(panels, start=1):
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        custom: Dict[str, Any] = {"fillOpacity": 60 if stacked else 10}
        if stacked:
            custom["stacking"] = {"mode": "normal"}
        out_panels.append({
            "id": i, "type": "timeseries", "title": ptitle, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
            "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": lg}
                        for j, (e, lg) in enumerate(targets)],
        })
        x += w
        row_h = max(row_h, h)
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {"text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"}, "hide": 0},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
         "query": {"query": f"label_values({job_metric}, instance)", "refId": "instance"},
         "definition": f"label_values({job_metric}, instance)", "includeAll": True, "multi": True,
         "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1},
        *extra_vars,
    ]
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "title": title, "uid": uid, "schemaVersion": 39, "version": 2, "editable": True,
        "time": {"from": "now-24h", "to": "now"}, "refresh": "30s",
        "templating": {"list": variables}, "panels": out_panels,
    }


INST = 'instance=~"$instance"'
EXPF = f'{INST}, experiment=~"$experiment"'

EXPERIMENT = {"name": "experiment", "label": "Experiment", "type": "query", "datasource": DS,
              "query": {"query": "label_values(scitagd_collector_flows_started_total, experiment)", "refId": "exp"},
              "definition": "label_values(scitagd_collector_flows_started_total, experiment)",
              "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}, "refresh": 2}

COLLECTOR: List[Panel] = [
    ("Throughput by experiment", "bps", 24, 9,
     [(f"sum by (experiment) (rate(scitagd_collector_bytes_total{{{EXPF}}}[5m])) * 8", "{{experiment}}")], True),
    ("Throughput by activity", "bps", 12, 9,
     [(f"sum by (experiment, activity) (rate(scitagd_collector_bytes_total{{{EXPF}}}[5m])) * 8",
       "{{experiment}} / {{activity}}")], True),
    ("Active flows", "short", 12, 9,
     [(f"sum by (experiment) (scitagd_collector_active_flows{{{EXPF}}})", "{{experiment}}")], True),
    ("Flows started / ended / expired per minute", "short", 12, 8,
     [(f"sum by (experiment) (rate(scitagd_collector_flows_started_total{{{EXPF}}}[5m])) * 60",
       "started {{experiment}}"),
      (f"sum by (experiment) (rate(scitagd_collector_flows_ended_total{{{EXPF}}}[5m])) * 60", "ended {{experiment}}"),
      (f"sum by (experiment) (rate(scitagd_collector_flows_expired_total{{{EXPF}}}[5m])) * 60",
       "expired {{experiment}}")], False),
    ("Received and rejected", "short", 12, 8,
     [(f"sum by (transport) (rate(scitagd_collector_datagrams_total{{{INST}}}[5m]))", "received {{transport}}/s"),
      (f"sum by (reason) (rate(scitagd_collector_rejected_total{{{INST}}}[5m]))", "rejected {{reason}}/s"),
      (f'sum by (outcome) (rate(scitagd_collector_fireflies_total{{{INST}, outcome=~"duplicate|local_only"}}[5m]))',
       "{{outcome}}/s")], False),
    ("Store", "short", 12, 8,
     [(f"sum(scitagd_collector_pending_rows{{{INST}}})", "fireflies waiting for the store"),
      (f"sum(rate(scitagd_collector_store_rows_total{{{INST}}}[5m]))", "written/s"),
      (f"sum(rate(scitagd_collector_store_errors_total{{{INST}}}[5m]))", "failed flushes/s"),
      (f"sum(rate(scitagd_collector_store_dropped_total{{{INST}}}[5m]))", "dropped/s"),
      (f"min(scitagd_collector_store_up{{{INST}}})", "store up")], False),
    ("Syslog over TCP", "short", 12, 8,
     [(f"sum(scitagd_collector_tcp_connections{{{INST}}})", "connections"),
      (f"sum by (reason) (rate(scitagd_collector_tcp_refused_total{{{INST}}}[5m]))", "refused {{reason}}/s")], False),
]

DAEMON_EXP = {**EXPERIMENT, "query": {"query": "label_values(scitagd_active_flows, experiment)", "refId": "exp"},
              "definition": "label_values(scitagd_active_flows, experiment)"}

DAEMON: List[Panel] = [
    ("Marked traffic by experiment and activity", "bps", 24, 9,
     [(f"sum by (experiment, activity) (rate(scitagd_marked_bytes_total{{{EXPF}}}[5m])) * 8",
       "{{experiment}} / {{activity}}")], True),
    ("Marked packets by interface", "pps", 12, 8,
     [(f"sum by (interface) (rate(scitagd_marked_packets_total{{{EXPF}}}[5m]))", "{{interface}}")], True),
    ("Unmarked packets of tagged flows, by reason", "pps", 12, 8,
     [(f"sum by (reason) (rate(scitagd_unmarked_packets_total{{{INST}}}[5m]))", "{{reason}}")], False),
    ("Active flows", "short", 12, 8,
     [(f"sum by (experiment) (scitagd_active_flows{{{EXPF}}})", "{{experiment}}")], True),
    ("Flows reported, by source", "short", 12, 8,
     [(f'sum by (source) (rate(scitagd_events_total{{{INST}, state="start"}}[5m])) * 60', "{{source}} starts/min"),
      (f'sum by (source) (rate(scitagd_events_total{{{INST}, state="end"}}[5m])) * 60', "{{source}} ends/min")],
     False),
    ("Fireflies sent and failed", "short", 12, 8,
     [(f"sum by (destination) (rate(scitagd_fireflies_sent_total{{{INST}}}[5m]))", "sent to {{destination}}/s"),
      (f"sum by (destination, error) (rate(scitagd_fireflies_failed_total{{{INST}}}[5m]))",
       "failed {{destination}} {{error}}/s")], False),
    ("Rejected input", "short", 12, 8,
     [(f"sum by (source, reason) (rate(scitagd_rejected_total{{{INST}}}[5m]))", "{{source}} {{reason}}/s")], False),
    ("Marker map and sinks", "short", 12, 8,
     [(f"sum(scitagd_marker_map_entries{{{INST}}})", "map entries"),
      (f"sum(scitagd_marker_map_capacity{{{INST}}})", "map capacity"),
      (f"sum by (sink) (scitagd_sink_queue_length{{{INST}}})", "queue {{sink}}"),
      (f"sum by (sink) (rate(scitagd_sink_queue_dropped_total{{{INST}}}[5m]))", "dropped {{sink}}/s")], False),
    ("Flow table", "short", 12, 8,
     [(f"sum by (kind) (rate(scitagd_flow_table_events_total{{{INST}}}[5m])) * 60", "{{kind}}/min")], False),
]


def main() -> None:
    for name, doc in (("scitagd-collector.json", dashboard("scitagd-collector", "SciTags collector",
                                                              "scitagd_collector_datagrams_total", [EXPERIMENT],
                                                              COLLECTOR)),
                      ("scitagd-daemon.json", dashboard("scitagd-daemon", "SciTags daemon (scitagd)",
                                                         "scitagd_events_total", [DAEMON_EXP], DAEMON))):
        (HERE / name).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
