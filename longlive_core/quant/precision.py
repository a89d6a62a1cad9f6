"""A precision, resolved once from its name: the compute dtype, how the block linears are stored, what it can fuse.

`fp8` and `int8 dynamic` swap the linears inside the transformer blocks for our own (linears.py); `int8 weight-only`
is torchao's Int8WeightOnlyConfig. Text and time embeddings, the time projection and the head stay in 16-bit: they
are small and sensitive. Quantization runs in an explicit setup step (Precision.apply), never at import.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..errors import BackendUnavailableError, ConfigError
from .linears import Float8Linear, Int8DynamicLinear

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Precision:
    """name: as the loader lists it; dtype: the compute dtype; linear: our quantized linear class of the block
    linears (None: plain nn.Linear); torchao: the block linears hold torchao's int8 weight-only tensors."""

    name: str
    dtype: torch.dtype
    linear: type | None = None
    torchao: bool = False
    min_capability: tuple[int, int] | None = None

    @property
    def compilable(self) -> bool:
        """Compiling torchao's int8 tensor subclasses took minutes on the H100 (run 48: first block with compile and
        capture bf16 16 s, fp8 8 s, our int8 dynamic 80 s)."""
        return not self.torchao

    @property
    def fuses_qkv(self) -> bool:
        """Plain, FP8 and int8 dynamic linears concatenate (their steps are per output row); torchao's do not."""
        return not self.torchao

    @property
    def quantized_rows(self) -> bool:
        """The linears take activations quantized per row, which the fused norm kernel can hand them directly."""
        return self.linear is Float8Linear

    @property
    def gelu_epilogue(self) -> bool:
        """The FFN's GELU can run in the first GEMM's epilogue (cuBLASLt, plain 16-bit linears)."""
        return self.linear is None and not self.torchao

    def check(self, device: torch.device) -> "Precision":
        """Refuses what this machine cannot run, with the reason."""
        if self.min_capability and device.type != "cuda":
            raise BackendUnavailableError(f"precision '{self.name}' needs an NVIDIA GPU of compute capability 8.9 or "
                                          f"newer (Ada, Hopper); this model runs on the CPU: choose bf16 or int8")
        if self.min_capability and torch.cuda.get_device_capability(device) < self.min_capability:
            major, minor = torch.cuda.get_device_capability(device)
            raise BackendUnavailableError(f"precision '{self.name}' needs compute capability 8.9 or newer; this GPU "
                                          f"has {major}.{minor}: choose bf16 or int8")
        if self.torchao:
            _torchao()
        return self

    def apply(self, model) -> None:
        """Quantizes the linears inside a freshly loaded model's blocks, once. The model is loaded in self.dtype
        (load_model(precision=...)); the linears take whatever dtype it has (float32 in the CPU tests)."""
        if model.quantized is not None:
            raise ConfigError(f"the model is already in precision '{model.quantized.name}'; load it again")
        if self.linear is not None:
            with torch.no_grad():
                _swap_linears(model.blocks, self.linear)
            log.info("block linears in %s", "row-wise FP8 (torch._scaled_mm)" if self.linear is Float8Linear else
                     "int8 with per-token int8 activations (torch._int_mm)")
        elif self.torchao:
            tq = _torchao()
            with torch.inference_mode():
                tq.quantize_(model.blocks, tq.Int8WeightOnlyConfig(), filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
            log.info("quantized the block linears with torchao (int8 weight-only)")
        model.quantized = self

    def dense_weight(self, linear: torch.nn.Module) -> torch.Tensor:
        """A block linear's weight in float32, dequantized."""
        w = linear.weight
        if self.torchao:
            return w.dequantize().float()
        if self.linear is not None:
            return w.float() * linear.weight_scale.t()
        return w.float()


PRECISIONS = {p.name: p for p in (
    Precision("bf16", torch.bfloat16),
    Precision("fp16", torch.float16),
    Precision("fp8", torch.bfloat16, Float8Linear, min_capability=(8, 9)),
    Precision("int8 weight-only", torch.bfloat16, torchao=True),
    Precision("int8 dynamic", torch.bfloat16, Int8DynamicLinear),
)}


def resolve(name: str, device: torch.device | None = None) -> Precision:
    """The precision of a name, checked against the device where given."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision '{name}' is unknown; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name] if device is None else PRECISIONS[name].check(device)


def plain(dtype: torch.dtype) -> Precision:
    """The precision of a model that was not quantized: plain linears in its dtype (float32 for the reference runs)."""
    named = {p.dtype: p for p in PRECISIONS.values() if p.linear is None and not p.torchao}
    return named.get(dtype) or Precision(str(dtype).removeprefix("torch."), dtype)


def _swap_linears(module: torch.nn.Module, kind: type) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, kind(child))
        else:
            _swap_linears(child, kind)


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        raise BackendUnavailableError("quantized precisions need torchao: pip install torchao==0.18.0") from exc
    return tq
