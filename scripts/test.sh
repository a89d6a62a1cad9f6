#!/usr/bin/env bash
# The test command: sets up the venv (a real ComfyUI 0.3.75, CPU) and Chromium, then runs every test.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup_env.sh" >/dev/null
# the browser test drives Debian's Chromium (Playwright's own browser download is not used)
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cd "$REPO"
exec "${LONGLIVE_VENV:-$REPO/.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
