#!/usr/bin/env bash
# The test command: sets up the venv (a real ComfyUI 0.3.75, CPU), then runs every test.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup_env.sh" >/dev/null
cd "$REPO"
exec "${LONGLIVE_VENV:-$REPO/.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
