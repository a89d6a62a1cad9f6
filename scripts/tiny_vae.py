"""Writes a tiny random-weight Wan 2.1 VAE .safetensors that ComfyUI's VAELoader accepts.

    python scripts/tiny_vae.py OUT.safetensors [DIM]      (with ComfyUI on PYTHONPATH: host.child_env)
"""

import sys

out, dim = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import torch  # noqa: E402
from comfy.ldm.wan.vae import WanVAE  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.manual_seed(0)
model = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])
state = {}
for key, value in model.state_dict().items():  # comfy ops leave weights uninitialized
    if key.endswith("gamma"):
        state[key] = torch.ones_like(value)
    elif key.endswith("bias"):
        state[key] = torch.zeros_like(value)
    else:
        state[key] = torch.randn_like(value) / max(1, value[0].numel()) ** 0.5
save_file({k: v.contiguous() for k, v in state.items()}, out)
