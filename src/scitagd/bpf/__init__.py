# SPDX-License-Identifier: Apache-2.0
"""The kernel side: eBPF programs (shipped compiled: marker.bpf.o on tc egress, watcher.bpf.o on
a cgroup's sock_ops) and what loads and reads them from Python through the system libbpf.

abi.py is the one Python mirror of the structs user space shares with them (tests check it
against the objects' BTF); libbpf.py the ctypes bindings; loader.py the marker, watchloader.py
the watcher; build.py rebuilds the objects reproducibly.
"""
