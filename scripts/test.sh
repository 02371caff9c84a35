#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up, then run lint, type checks and the whole test suite (privileged tests need root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "== ruff";  .venv/bin/ruff check src tests bench
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
