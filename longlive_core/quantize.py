"""Precision options of the loader: bf16 / fp16, FP8 and INT8 linears inside the blocks.

`fp8` is our own row-wise FP8 linear (the scheme of torchao's Float8DynamicActivationFloat8WeightConfig
with PerRow: e4m3 weights with one scale per output row, activations quantized per token at run time,
torch._scaled_mm). It is plain torch, so torch.compile fuses the activation quantization into the stage
around it in seconds, where compiling torchao's tensor subclasses took minutes on the H100. The INT8
options are torchao's. Text and time embeddings, the time projection and the head stay in 16-bit: they
are small and sensitive. Quantization runs in an explicit setup step, never at import.
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
QUANTIZED = ("fp8", "int8 weight-only", "int8 dynamic")
# torchao's int8 dynamic path does work that a CUDA graph capture refuses (seen on the H100)
CAPTURABLE = ("bf16", "fp16", "fp8", "int8 weight-only")
# compiling torchao's int8 tensor subclasses took minutes on the H100; the rest compiles in seconds
COMPILABLE = ("bf16", "fp16", "fp8")


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
    if precision in ("int8 weight-only", "int8 dynamic"):
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
    triton_kernels.gelu_rowwise_fp8[(rows,)](x, values, scales, cols, float(E4M3_MAX), TINY, GELU_NEGATIVE_BOUND,
                                             CHUNK=min(chunk, row_block(cols)), num_warps=warps)
    return values, scales


def _to_fp8(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Float8Linear(child))
        else:
            _to_fp8(child)


def _config(precision: str):
    tq = _torchao()
    if precision == "int8 weight-only":
        return tq.Int8WeightOnlyConfig()
    return tq.Int8DynamicActivationInt8WeightConfig()


def apply_precision(model: CausalWan, precision: str) -> CausalWan:
    """Casts to the compute dtype and quantizes the linears inside the transformer blocks."""
    check_precision(precision, model.device)
    model = model.to(compute_dtype(precision))
    if precision == "fp8":
        with torch.no_grad():
            _to_fp8(model.blocks)
        log.info("block linears in row-wise FP8 (torch._scaled_mm)")
    elif precision in QUANTIZED:
        with torch.inference_mode():
            _torchao().quantize_(model.blocks, _config(precision),
                                 filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
        log.info("quantized the block linears with torchao (%s)", precision)
    return model
