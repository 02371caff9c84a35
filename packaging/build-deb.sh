#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the Debian 12 packages of scitagd (amd64 and arm64) with dpkg-deb.
#
#   bash packaging/build-deb.sh [--out DIR] [--arch amd64|arm64]...
#
# Debian 12 packages every dependency but msgspec: the package depends on python3-aiohttp,
# python3-yaml, python3-prometheus-client, python3-pyroute2, python3-uvloop and libbpf1, and
# bundles scitagd and msgspec (packaging/deb/requirements-deb12.txt, CPython 3.11 manylinux2014
# wheels, pinned with hashes) in /usr/lib/scitagd/site-packages. Same units, configs, manual
# pages and dashboards as the RPM; byte-compiled in postinst, as Debian does. Prints one line
# per package written.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist/deb
arches=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --arch) arches+=("$2"); shift 2 ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb missing" >&2; exit 1; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
cache=${SCITAGD_WHEEL_CACHE:-/var/cache/scitagd-build/wheels}
# Who answers for the package at your site (Debian wants a real address here).
maintainer=${DEB_MAINTAINER:-scitagd developers <root@localhost>}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pipq() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

build_iso=()
"$PY" -c 'import setuptools.command.bdist_wheel' 2>/dev/null || "$PY" -c 'import setuptools, wheel' 2>/dev/null && build_iso=(--no-build-isolation)
pipq wheel --no-deps "${build_iso[@]}" -w "$work/wheel" . >/dev/null
wheel=$(ls "$work"/wheel/scitagd-*.whl)

for deb_arch in "${arches[@]}"; do
    case "$deb_arch" in
        amd64) arch=x86_64 ;;
        arm64) arch=aarch64 ;;
        *) echo "build-deb: architecture $deb_arch: expected amd64 or arm64" >&2; exit 2 ;;
    esac
    root=$work/root-$deb_arch
    priv=$root/usr/lib/scitagd/site-packages
    target=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --platform "manylinux2014_$arch")
    local_install() {
        pipq install --no-deps --no-index --require-hashes --no-compile "${target[@]}" --find-links "$cache/deb12-$arch" \
            --target "$priv" -r packaging/deb/requirements-deb12.txt
    }
    if ! local_install 2>/dev/null; then
        pipq download --no-deps --require-hashes "${target[@]}" -d "$cache/deb12-$arch" -r packaging/deb/requirements-deb12.txt
        local_install
    fi
    rm -rf "$priv/bin"
    pipq install --no-deps --no-index --no-compile "${target[@]}" --target "$priv" "$wheel"
    rm -rf "$priv/bin" "$priv/share"  # console scripts; the wheel's data files, installed below in /usr/share

    sed '1s|^#!.*|#!/usr/bin/python3 -I|' packaging/rpm/scitagd.py > "$work/scitagd"
    install -Dm0755 "$work/scitagd" "$root/usr/bin/scitagd"
    install -Dm0644 packaging/systemd/scitagd.service "$root/lib/systemd/system/scitagd.service"
    install -Dm0644 packaging/systemd/scitagd-collector.service "$root/lib/systemd/system/scitagd-collector.service"
    install -Dm0644 packaging/sysusers.d/scitagd.conf "$root/usr/lib/sysusers.d/scitagd.conf"
    install -Dm0644 packaging/tmpfiles.d/scitagd.conf "$root/usr/lib/tmpfiles.d/scitagd.conf"
    install -Dm0644 examples/scitagd.yaml "$root/etc/scitagd/scitagd.yaml"
    install -Dm0644 packaging/collector.yaml "$root/etc/scitagd/collector.yaml"
    install -d "$root/usr/share/man/man8" "$root/usr/share/man/man5" "$root/usr/share/scitagd/grafana" \
        "$root/usr/share/doc/scitagd"
    gzip -9n < packaging/man/scitagd.8 > "$root/usr/share/man/man8/scitagd.8.gz"
    gzip -9n < packaging/man/scitagd.yaml.5 > "$root/usr/share/man/man5/scitagd.yaml.5.gz"
    install -m0644 grafana/*.json "$root/usr/share/scitagd/grafana/"
    install -m0644 packaging/deb/copyright "$root/usr/share/doc/scitagd/copyright"
    install -Dm0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/scitagd"
    gzip -9n < README.md > "$root/usr/share/doc/scitagd/README.md.gz"
    install -m0644 examples/scitagd.yaml "$root/usr/share/doc/scitagd/scitagd.yaml.example"
    printf 'scitagd (%s-1) bookworm; urgency=medium\n\n  * Package built by packaging/build-deb.sh.\n\n -- scitagd developers <root@localhost>  %s\n' \
        "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
        | sed "s/ -- scitagd developers <root@localhost>/ -- $maintainer/" \
        | gzip -9n > "$root/usr/share/doc/scitagd/changelog.Debian.gz"
    find "$root" -type d -exec chmod 0755 {} +

    install -d "$root/DEBIAN"
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$deb_arch/" -e "s/@SIZE@/$size/" \
        -e "s/^Maintainer: .*/Maintainer: $maintainer/" packaging/deb/control.in \
        > "$root/DEBIAN/control"
    printf '/etc/scitagd/scitagd.yaml\n/etc/scitagd/collector.yaml\n' > "$root/DEBIAN/conffiles"
    install -m0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort \
        | xargs md5sum > DEBIAN/md5sums)
    deb=$out/scitagd_${version}-1_${deb_arch}.deb
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    echo "$deb"
done
