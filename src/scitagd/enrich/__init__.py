# SPDX-License-Identifier: Apache-2.0
"""Enrichers (`enrichers:`): TCP statistics of active flows for ongoing fireflies, per-flow
metrics and the final usage of an end (components.Enricher).

conf.py the config; sockdiag.py a hand-written sock_diag client; netlink.py samples every
period through it; skops.py takes the samples the watcher's sock_ops program sends.
"""
