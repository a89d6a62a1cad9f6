#!/usr/bin/env bash
# The test command: sets up the venv (a real ComfyUI 0.3.75, CPU) and Chromium, then runs every test.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup_env.sh" >/dev/null
# the browser test drives Debian's Chromium (Playwright's own browser download is not used)
if ! command -v chromium >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "[test.sh] installing Debian's chromium system-wide for the browser test (apt-get)" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "[test.sh] apt-get could not install chromium (no network or no Debian mirror?): the browser test" \
                 "will skip, or fail where LONGLIVE_REQUIRE_BROWSER is set (CI)" >&2
        fi
    else
        echo "[test.sh] no chromium and apt-get cannot run here (not root): the browser test will skip" >&2
    fi
fi
cd "$REPO"
exec "${LONGLIVE_VENV:-$REPO/.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
