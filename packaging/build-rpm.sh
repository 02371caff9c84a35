#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the EL9 RPMs of scitagd (x86_64 and aarch64) with rpmbuild, on EL9 or on Debian.
#
#   bash packaging/build-rpm.sh [--out DIR] [--arch x86_64|aarch64]... [--srpm]
#
# 1. scitagd's wheel (pip wheel, no dependencies);
# 2. the pinned dependency closure for CPython 3.9 (packaging/rpm/requirements-el9.txt, with
#    hashes) as manylinux2014 wheels per architecture, downloaded from PyPI into a cache
#    ($SCITAGD_WHEEL_CACHE, default /var/cache/scitagd-build/wheels) that later builds reuse;
# 3. per architecture, a private site-packages tree (pip install --target, nothing compiled by
#    this host's Python), byte-compiled by a CPython 3.9 if one is found ($PYTHON39, python3.9
#    on PATH, pyenv's), as a tarball source;
# 4. rpmbuild -bb --target ARCH with packaging/rpm/scitagd.spec; EL9's systemd macros come
#    from packaging/rpm/macros.el9-compat when the host has none.
# Prints one line per RPM written.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

out=dist/rpm
arches=()
srpm=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --arch) arches+=("$2"); shift 2 ;;
        --srpm) srpm=1; shift ;;
        *) echo "build-rpm: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#arches[@]} -gt 0 ] || arches=(x86_64 aarch64)
for a in "${arches[@]}"; do
    case "$a" in x86_64|aarch64) ;; *) echo "build-rpm: architecture $a: expected x86_64 or aarch64" >&2; exit 2 ;; esac
done
command -v rpmbuild >/dev/null || { echo "build-rpm: rpmbuild missing (Debian: apt-get install rpm; EL: dnf install rpm-build)" >&2; exit 1; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
cache=${SCITAGD_WHEEL_CACHE:-/var/cache/scitagd-build/wheels}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
[ -n "$version" ] || { echo "build-rpm: no version in pyproject.toml" >&2; exit 1; }
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t0=$(date +%s.%N)
phase() { echo "build-rpm: $1 $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s" >&2; t0=$(date +%s.%N); }
pipq() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

find_python39() {
    local c
    for c in "${PYTHON39:-}" "$(command -v python3.9 2>/dev/null || true)" /root/.pyenv/versions/3.9*/bin/python3.9; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        if [ "$("$c" -c 'import sys; print(sys.version_info[:2] == (3, 9))' 2>/dev/null)" = True ]; then
            echo "$c"; return 0
        fi
    done
    return 1
}

# 1. scitagd's wheel.
build_iso=()
"$PY" -c 'import setuptools.command.bdist_wheel' 2>/dev/null || "$PY" -c 'import setuptools, wheel' 2>/dev/null && build_iso=(--no-build-isolation)
pipq wheel --no-deps "${build_iso[@]}" -w "$work/wheel" . >/dev/null
wheel=$(ls "$work"/wheel/scitagd-*.whl)
phase "wheel"

# 2-3. Dependencies and the private tree, per architecture.
py39=$(find_python39 || true)
[ -n "$py39" ] || echo "build-rpm: no CPython 3.9 here: the bundled code ships without .pyc (compiled in memory at each start)" >&2
tree_for() {  # the private site-packages of one architecture, as a source tarball
    local arch=$1 tree=$work/tree-$1/site-packages
    local target=(--only-binary=:all: --python-version 3.9 --implementation cp --abi cp39 --platform "manylinux2014_$arch")
    local_install() {
        pipq install --no-deps --no-index --require-hashes --no-compile "${target[@]}" --find-links "$cache/$arch" \
            --target "$tree" -r packaging/rpm/requirements-el9.txt
    }
    if ! local_install 2>/dev/null; then  # not all in the cache yet (or a hash differs): from PyPI
        pipq download --no-deps --require-hashes "${target[@]}" -d "$cache/$arch" -r packaging/rpm/requirements-el9.txt
        local_install
    fi
    rm -rf "$tree/bin"
    pipq install --no-deps --no-index --no-compile "${target[@]}" --target "$tree" "$wheel"
    rm -rf "$tree/bin"  # console scripts for this host's Python; packaging/rpm/scitagd.py replaces them
    rm -rf "$tree/share"  # the wheel's data files (man pages, dashboards, examples): %install puts them in /usr/share
    if [ -n "$py39" ]; then
        "$py39" -m compileall -q -j0 "$tree" >/dev/null
    fi
    tar -czf "$work/scitagd-$version-py39-$arch.tar.gz" -C "$work/tree-$arch" site-packages
}
pids=()
for arch in x86_64 aarch64; do
    mkdir -p "$work/tree-$arch/site-packages"
    want=0
    for a in "${arches[@]}"; do [ "$a" = "$arch" ] && want=1; done
    [ "$srpm" = 1 ] && want=1  # the SRPM carries both trees
    if [ "$want" = 1 ]; then
        tree_for "$arch" &  # both architectures at once: mostly waiting on PyPI
        pids+=($!)
    else
        tar -czf "$work/scitagd-$version-py39-$arch.tar.gz" -C "$work/tree-$arch" site-packages
    fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
phase "dependencies, byte-compiled, source tarballs"

# 4. rpmbuild.
top=$work/rpmbuild
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
mv "$work"/scitagd-"$version"-py39-*.tar.gz "$top/SOURCES/"
cp packaging/rpm/requirements-el9.txt "$top/SOURCES/"
tar -czf "$top/SOURCES/scitagd-$version.tar.gz" --transform "s,^,scitagd-$version/," \
    LICENSE README.md examples/scitagd.yaml grafana packaging
cp packaging/rpm/scitagd.spec "$top/SPECS/"
# zstd payload (EL9's rpm reads it): level 19, EL9's own choice, costs ~10 s a package here.
opts=(--define "_topdir $top" --define "scitagd_version $version" --define "_binary_payload w${SCITAGD_RPM_ZSTD_LEVEL:-19}.zstdio")
if [ -z "$(rpm --eval '%{?systemd_post:1}')" ]; then
    # As ~/.rpmmacros: --load'ed files are forgotten when --target re-reads the configuration.
    mkdir -p "$work/home"
    cp packaging/rpm/macros.el9-compat "$work/home/.rpmmacros"
    export HOME=$work/home
fi
rpm -q rpm >/dev/null 2>&1 || opts+=(--nodeps)  # not an RPM-based host: BuildRequires cannot be checked
pids=()
for arch in "${arches[@]}"; do
    rpmbuild -bb --quiet --target "$arch-redhat-linux" "${opts[@]}" --define "dist .el9" \
        --define "_builddir $top/BUILD-$arch" --define "_buildrootdir $top/BUILDROOT-$arch" \
        "$top/SPECS/scitagd.spec" &  # own build dirs: two rpmbuilds racing to make one BUILDROOT fail
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
phase "rpmbuild ${arches[*]}"
if [ "$srpm" = 1 ]; then
    rpmbuild -bs --quiet "${opts[@]}" --define "dist .el9" "$top/SPECS/scitagd.spec" >/dev/null
    cp "$top"/SRPMS/*.src.rpm "$out/"
    ls "$out"/*.src.rpm
fi
find "$top/RPMS" -name '*.rpm' -exec cp {} "$out/" \; -exec sh -c 'echo "$1/$(basename "$2")"' _ "$out" {} \;
