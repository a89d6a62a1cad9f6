"""Writes a random-weight Wan VAE .safetensors that ComfyUI's VAELoader accepts: a tiny Wan 2.1 VAE of width DIM,
(`wan2.2`) the Wan 2.2 VAE, which ComfyUI builds at its full width whatever the file holds (705M weights, 1.4 GB in
bf16), or (`taew2_1`, `taew2_2`) Wan 2.1's or 2.2's tiny decoder in lighttaew2_1's / lighttaew2_2's format (ComfyUI's
TAEHV, 16 or 48 latent channels, fp16).

    python scripts/tiny_vae.py OUT.safetensors [DIM | wan2.2 | taew2_1 | taew2_2]

with ComfyUI on PYTHONPATH (host.child_env).
"""

import sys

out, kind = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "4"
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import torch  # noqa: E402
from comfy.ldm.wan import vae, vae2_2  # noqa: E402
from comfy.taesd.taehv import TAEHV  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.manual_seed(0)
if kind == "wan2.2":  # ComfyUI's own config for this VAE (comfy/sd.py)
    model = vae2_2.WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    dtype = torch.bfloat16
elif kind in ("taew2_1", "taew2_2"):
    model, dtype = TAEHV(latent_channels=16 if kind == "taew2_1" else 48, show_progress_bar=False), torch.float16
else:
    model = vae.WanVAE(dim=int(kind), z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                       temperal_downsample=[False, True, True])
    dtype = torch.float32
state = {}
for key, value in model.state_dict().items():  # comfy ops leave weights uninitialized
    if key.endswith("gamma"):
        state[key] = torch.ones_like(value, dtype=dtype)
    elif key.endswith("bias"):
        state[key] = torch.zeros_like(value, dtype=dtype)
    else:
        state[key] = (torch.randn_like(value) / max(1, value[0].numel()) ** 0.5).to(dtype)
save_file({k: v.contiguous() for k, v in state.items()}, out)
