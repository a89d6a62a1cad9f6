"""Our quantized linears: row-wise FP8 and int8 dynamic, both plain torch.

`Float8Linear` follows the scheme of torchao's Float8DynamicActivationFloat8WeightConfig with PerRow: e4m3 weights
with one scale per output row, activations quantized per token at run time, torch._scaled_mm. `Int8DynamicLinear`
follows torchao's Int8DynamicActivationInt8WeightConfig (symmetric int8 weights per output row, activations per
token, torch._int_mm). Being plain torch, torch.compile fuses the activation quantization into the stage around it
(compiling torchao's tensor subclasses took minutes on the H100) and CUDA graphs capture them (torchao's int8 dynamic
path refuses capture).
"""

from __future__ import annotations

import torch

from ..kernels.library import custom_op
from ..kernels.ops import row_block
from .fp8 import E4M3_MAX, SCALE_FLOOR, rowwise_fp8


class Float8Linear(torch.nn.Module):
    """A Linear with row-wise FP8 weights and per-token dynamic FP8 activations."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight, scale = rowwise_fp8(linear.weight.detach())
        self.weight = torch.nn.Parameter(weight, requires_grad=False)  # [out, in] e4m3
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = rowwise_fp8(x.reshape(-1, x.shape[-1]))
        out = self.matmul(values, scale, x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def matmul(self, values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Quantized activations [M, in] (row scales [M, 1]) -> [M, out] in dtype; the bias is added to the
        float32 product in the GEMM's epilogue (no separate pass over the output)."""
        return torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                                out_dtype=dtype)

    def gelu_rows_into(self, down: "Float8Linear", values: torch.Tensor, scale: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
        """down(gelu_tanh(self(x))) from x's quantized rows [M, in] (row scales [M, 1]) -> [M, out of down]: the
        hidden activations (biased in the GEMM) GELU'd and quantized for `down` in one pass (gelu_rowwise_fp8)
        instead of being written in 16-bit and read twice."""
        hidden, hidden_scale = gelu_rowwise_fp8(self.matmul(values, scale, dtype))
        return down.matmul(hidden, hidden_scale, dtype)


INT8_STEP_DIVISOR = 127.5  # torchao's symmetric int8 step: the row's largest |value| / ((127 - -128) / 2)
FLOAT32_EPS = torch.finfo(torch.float32).eps  # torchao's smallest int8 step
CUBLAS_MIN_ROWS = 17  # torch._int_mm on CUDA takes more than 16 rows


def rowwise_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] -> (int8 values [M, K], float32 steps [M, 1]) with x ~= values * steps, as torchao's
    symmetric per-row quantization computes them: the step in x's dtype, the values rounded half to even from
    x / step in float32 and clamped to [-128, 127]."""
    step = (x.abs().amax(dim=1, keepdim=True) / INT8_STEP_DIVISOR).clamp(min=FLOAT32_EPS).float()
    return (x.float() * (1.0 / step)).round().clamp(-128, 127).to(torch.int8), step


class Int8DynamicLinear(torch.nn.Module):
    """A Linear with per-row int8 weights and per-token dynamic int8 activations: int32 products through
    torch._int_mm, scaled by both steps in float32, the bias added there."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight, step = rowwise_int8(linear.weight.detach())
        self.weight = torch.nn.Parameter(weight, requires_grad=False)  # [out, in] int8
        self.register_buffer("weight_scale", step.t().contiguous())  # [1, out]
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        if flat.is_cuda and rows < CUBLAS_MIN_ROWS:
            flat = torch.nn.functional.pad(flat, (0, 0, 0, CUBLAS_MIN_ROWS - rows))
        values, step = rowwise_int8(flat)
        out = torch._int_mm(values, self.weight.t()).float() * step * self.weight_scale
        out = (out if self.bias is None else out + self.bias.float()).to(x.dtype)[:rows]
        return out.reshape(*x.shape[:-1], out.shape[-1])


# |gelu_tanh(h)| for h < 0 peaks at 0.17004 (h = -0.7522), 0.1699 in bf16 and 0.17004 in fp16: a bound above both
GELU_NEGATIVE_BOUND = 0.171
GELU_LAUNCH = (2048, 8)  # (values a step of a row, warps) of gelu_rowwise_fp8's kernel: the fastest in run 45


@custom_op("gelu_rowwise_fp8", mutates_args=())
def gelu_rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gelu_tanh(x) quantized row by row, as rowwise_fp8(F.gelu(x)) computes it in 16-bit: x [M, N] ->
    (e4m3 [M, N], float32 scales [M, 1]). On CUDA one Triton kernel, a program a row (inductor's fusion of the
    torch ops: 0.137 ms against 0.063 at [4680, 8960], run 45)."""
    if x.is_cuda:
        return _gelu_rowwise_fp8_cuda(x.contiguous())
    return rowwise_fp8(torch.nn.functional.gelu(x, approximate="tanh"))


@gelu_rowwise_fp8.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], 1), dtype=torch.float32)


def _gelu_rowwise_fp8_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import jit, launch  # imports triton: only when the kernel runs

    rows, cols = x.shape
    values = torch.empty_like(x, dtype=torch.float8_e4m3fn)
    scales = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    chunk, warps = GELU_LAUNCH
    launch.launch(jit.gelu_fp8, (rows,), x, values, scales, cols, float(E4M3_MAX), SCALE_FLOOR,
                          GELU_NEGATIVE_BOUND, CHUNK=min(chunk, row_block(cols)), num_warps=warps)
    return values, scales
