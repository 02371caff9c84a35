# SPDX-License-Identifier: Apache-2.0
"""Sources (`plugins:`): each turns one kind of outside input into FlowEvents for Host.submit.

conf.py holds every source's config struct (imported by config.py without loading a source);
api.py (REST), namedpipe.py (StoRM's line protocol), firefly.py (XRootD/dCache fireflies),
watcher.py (TCP connections seen by a cgroup sock_ops program, or sock_diag polling).
"""
