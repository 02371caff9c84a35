#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up, then run the self-contained demo of the daemon on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/scitagd demo "$@"
