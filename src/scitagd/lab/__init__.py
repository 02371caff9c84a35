# SPDX-License-Identifier: Apache-2.0
"""The namespace lab: two hosts in network namespaces joined by veth, real processes in them,
a raw capture (netlab.py, tools.py); the self-contained demo built on it (demo.py); helpers the
tests and benchmarks share (util.py). Not used by the daemon or the collector."""
