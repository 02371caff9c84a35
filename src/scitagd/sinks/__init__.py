# SPDX-License-Identifier: Apache-2.0
"""Sinks (`backends:`): each consumes the dispatched event stream through its own bounded queue.

conf.py holds the config structs (backends.prometheus's too: the exporter is metrics.py, not a
sink); firefly.py sends fireflies to the peer and collectors, marker.py keeps the eBPF marker's
flow map equal to the flow table.
"""
