"""Precision options of the loader: bf16 / fp16, and torchao FP8 / INT8 linears inside the blocks.

Text and time embeddings, the time projection and the head stay in 16-bit: they are small
and sensitive. Quantization runs in an explicit setup step, never at import.
"""

from __future__ import annotations

import logging

import torch

from .errors import BackendUnavailableError, ConfigError
from .model import CausalWan

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp8", "int8 weight-only", "int8 dynamic")
QUANTIZED = ("fp8", "int8 weight-only", "int8 dynamic")
# torchao's int8 dynamic path does work that a CUDA graph capture refuses (seen on the H100)
CAPTURABLE = ("bf16", "fp16", "fp8", "int8 weight-only")


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
    if precision in QUANTIZED:
        _torchao()


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        raise BackendUnavailableError("quantized precisions need torchao: pip install torchao==0.18.0") from exc
    return tq


def _config(precision: str):
    tq = _torchao()
    if precision == "fp8":
        return tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow())
    if precision == "int8 weight-only":
        return tq.Int8WeightOnlyConfig()
    return tq.Int8DynamicActivationInt8WeightConfig()


def apply_precision(model: CausalWan, precision: str) -> CausalWan:
    """Casts to the compute dtype and quantizes the linears inside the transformer blocks."""
    check_precision(precision, model.device)
    model = model.to(compute_dtype(precision))
    if precision in QUANTIZED:
        with torch.inference_mode():
            _torchao().quantize_(model.blocks, _config(precision),
                                 filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
        log.info("quantized the block linears with torchao (%s)", precision)
    return model
