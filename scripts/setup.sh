#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets up a development/run environment: Debian packages (when root) and a venv in .venv.
# Usage: bash scripts/setup.sh [--test]     (--test also installs what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(python3 python3-venv iproute2 libbpf1)
if [ "$want_test" = 1 ]; then
    # Real parts for the tests: XRootD server and client, iperf3, packet capture, eBPF toolchain.
    pkgs+=(xrootd-server xrootd-client iperf3 tcpdump clang clang-format llvm libbpf-dev ethtool chromium prometheus openvswitch-switch softflowd pmacct tshark)
    # Site packaging (tests/site): rpmbuild and unpacking, systemd's unit checks, strace for W^X,
    # libseccomp's Python binding to apply the units' SystemCallFilter=/RestrictAddressFamilies=,
    # and the Debian package's dependencies, to run it as installed.
    pkgs+=(rpm rpm2cpio cpio zstd systemd strace python3-seccomp groff-base)  # groff: man pages render cleanly
    pkgs+=(python3-aiohttp python3-yaml python3-prometheus-client python3-pyroute2 python3-uvloop)
    pkgs+=(clickhouse-server)  # the collector's ClickHouse store against a real 18.16
    pkgs+=(coturn nftables)  # backends.firefly.stun: a real STUN server behind a NAT made in namespaces
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
elif [ "$(id -u)" != 0 ]; then
    echo "setup: not root, skipping Debian packages (${pkgs[*]}); privileged tests will skip"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q -e .
fi
