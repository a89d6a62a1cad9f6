"""Precision options of the loader: bf16 / fp16, FP8 and INT8 linears inside the blocks.

`fp8` is our own row-wise FP8 linear (the scheme of torchao's Float8DynamicActivationFloat8WeightConfig
with PerRow: e4m3 weights with one scale per output row, activations quantized per token at run time,
torch._scaled_mm). `int8 dynamic` is likewise our own linear in torchao's Int8DynamicActivationInt8WeightConfig
scheme (symmetric int8 weights per output row, activations per token, torch._int_mm). Both are plain torch, so
torch.compile fuses the activation quantization into the stage around it (compiling torchao's tensor subclasses
took minutes on the H100) and CUDA graphs capture them (torchao's int8 dynamic path refuses capture).
`int8 weight-only` is torchao's Int8WeightOnlyConfig. Text and time embeddings, the time projection and the head
stay in 16-bit: they are small and sensitive. Quantization runs in an explicit setup step, never at import.
"""

from __future__ import annotations

import logging

import torch

from .attention import E4M3_MAX
from .errors import BackendUnavailableError, ConfigError
from .kernels import TINY, row_block
from .model import CausalWan

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp8", "int8 weight-only", "int8 dynamic")
# compiling torchao's int8 tensor subclasses took minutes on the H100 (first block with compile and capture, run 48:
# bf16 16 s, fp8 8 s, our int8 dynamic 80 s)
COMPILABLE = ("bf16", "fp16", "fp8", "int8 dynamic")


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is unknown; choose one of {', '.join(PRECISIONS)}")
    return torch.float16 if precision == "fp16" else torch.bfloat16


def check_precision(precision: str, device: torch.device) -> None:
    """Refuses an option this machine cannot run, with the reason."""
    compute_dtype(precision)
    if precision == "fp8":
        if device.type != "cuda":
            raise BackendUnavailableError("precision 'fp8' needs an NVIDIA GPU of compute capability 8.9 or newer "
                                          "(Ada, Hopper); this model runs on the CPU: choose bf16 or int8")
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise BackendUnavailableError(f"precision 'fp8' needs compute capability 8.9 or newer; this GPU has "
                                          f"{major}.{minor}: choose bf16 or int8")
    if precision == "int8 weight-only":
        _torchao()


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        raise BackendUnavailableError("quantized precisions need torchao: pip install torchao==0.18.0") from exc
    return tq


def rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] -> (e4m3 values [M, K], float32 scales [M, 1]) with x ~= values * scales."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=TINY) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


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

    def gelu_into(self, down: "Float8Linear", x: torch.Tensor) -> torch.Tensor:
        """down(gelu_tanh(self(x))): the FFN, its hidden activations (biased in the GEMM) GELU'd and quantized
        for `down` in one pass (gelu_rowwise_fp8) instead of being written in 16-bit and read twice."""
        values, scale = rowwise_fp8(x.reshape(-1, x.shape[-1]))
        out = self.gelu_rows_into(down, values, scale, x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def gelu_rows_into(self, down: "Float8Linear", values: torch.Tensor, scale: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
        """gelu_into from quantized activations [M, in] (row scales [M, 1]) -> [M, out of down]."""
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


@torch.library.custom_op("longlive::gelu_rowwise_fp8", mutates_args=())
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
    from . import triton_kernels  # imports triton: only when the kernel runs

    rows, cols = x.shape
    values = torch.empty_like(x, dtype=torch.float8_e4m3fn)
    scales = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    chunk, warps = GELU_LAUNCH
    triton_kernels.launch(triton_kernels.gelu_rowwise_fp8, (rows,), x, values, scales, cols, float(E4M3_MAX), TINY,
                          GELU_NEGATIVE_BOUND, CHUNK=min(chunk, row_block(cols)), num_warps=warps)
    return values, scales


def swap_linears(module: torch.nn.Module, kind: type) -> None:
    """Replaces every nn.Linear under module by kind(linear) (Float8Linear, Int8DynamicLinear)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, kind(child))
        else:
            swap_linears(child, kind)


def apply_precision(model: CausalWan, precision: str) -> CausalWan:
    """Casts to the compute dtype and quantizes the linears inside the transformer blocks."""
    check_precision(precision, model.device)
    model = model.to(compute_dtype(precision))
    if precision in ("fp8", "int8 dynamic"):
        with torch.no_grad():
            swap_linears(model.blocks, Float8Linear if precision == "fp8" else Int8DynamicLinear)
        log.info("block linears in %s", "row-wise FP8 (torch._scaled_mm)" if precision == "fp8" else
                 "int8 with per-token int8 activations (torch._int_mm)")
    elif precision == "int8 weight-only":
        with torch.inference_mode():
            _torchao().quantize_(model.blocks, _torchao().Int8WeightOnlyConfig(),
                                 filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
        log.info("quantized the block linears with torchao (int8 weight-only)")
    return model
