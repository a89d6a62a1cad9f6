"""umt5-xxl's encoder (Wan's text encoder) on the weights a host holds, near float32's accuracy, on bfloat16 tensor
cores, replayed from CUDA graphs.

ComfyUI computes umt5 in float32: every weight is cast to float32 in memory before each product, and its module code
issues the work no faster than the GPU runs it. For a text's own tokens (a prompt is 10-100) that is 33-44 ms of GPU
time and 42-55 ms of issuing on an H200 (run 143), on the way of every prompt a live run is sent without its text
being typed first. Here (run 148: 9.3 ms from a graph):
- each weight is widened to bfloat16 just before its product, into one scratch buffer (no copy of the weights is
  kept): exactly, for the weights it takes (e4m3, as in ComfyUI's scaled-FP8 umt5 file, and bfloat16);
- each product's float32 input is split in two bfloat16 parts (hi + lo: 16 of float32's 24 bits), both multiplied on
  tensor cores in one GEMM with float32 accumulation and output, and the halves added: float32's product to about
  2^-17 of each input value;
- the residual stream, the norms and the attention stay in float32, as ComfyUI's;
- the work is captured as a CUDA graph per bucket of token counts (a text padded to its bucket, the padding masked
  out of attention) and replayed (GraphedUmt5).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import CheckpointError

log = logging.getLogger(__name__)

BUCKETS, MAX_DISTANCE = 32, 128  # T5's relative position buckets (both directions)
EPS = 1e-6
STORED = (torch.float8_e4m3fn, torch.bfloat16)  # weights bfloat16 holds exactly
TOKEN_BUCKETS = (32, 64, 128, 256, 512)  # token counts a graph is captured for; a text is padded up to the next
WARM_BUCKETS = 3  # captured at the first encode (texts of up to 128 tokens: most prompts)


@dataclasses.dataclass(frozen=True)
class Linear:
    """A bias-free linear as stored: the weight [out, in] (e4m3 or bfloat16), and its scale (a scalar tensor, the
    scaled-FP8 format's, as stored: it multiplies in float32) or None."""
    weight: torch.Tensor
    scale: torch.Tensor | None

    def __call__(self, x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        """x [..., in] float32 -> float32 [..., out]: (x @ weight^T) * scale, x split in two bfloat16 parts."""
        hi = x.to(torch.bfloat16)
        both = torch.stack([hi, (x - hi.float()).to(torch.bfloat16)]).reshape(-1, x.shape[-1])
        y = _float32_product(both, self._bfloat16(scratch)).view(2, *x.shape[:-1], -1)
        y = y[0] + y[1]
        return y if self.scale is None else y.mul_(self.scale)

    def _bfloat16(self, scratch: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.bfloat16:
            return w
        if w.is_cuda and torch.cuda.get_device_capability(w.device) >= (8, 9):  # Triton's e4m3 conversion
            from ..kernels.ops import widen_e4m3

            return widen_e4m3(w, scratch)
        return scratch[:w.numel()].view(w.shape).copy_(w)


def _float32_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """bfloat16 x [m, k] @ w [n, k]^T -> float32 [m, n], accumulated in float32 (bfloat16 products are exact in
    float32): cuBLAS's GEMM with a float32 output on a GPU; elsewhere the same products in float32."""
    if x.is_cuda:
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    return x.float() @ w.float().t()


@dataclasses.dataclass(frozen=True)
class Layer:
    attention_norm: torch.Tensor
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    position_bias: torch.Tensor  # [BUCKETS, heads]
    ff_norm: torch.Tensor
    gate: Linear  # wi_0, through GELU (tanh)
    up: Linear  # wi_1
    down: Linear  # wo


class Umt5Encoder:
    """token ids [1, N] -> float32 [1, N, d] (the last layer, after its final norm). The weights are the host's
    tensors (none copied), looked up by their checkpoint names (T5's: encoder.block.{i}.layer.0.SelfAttention.q.weight,
    its .scale_weight where scaled, ...); CheckpointError names one it cannot take. scratch: where the weights are
    widened (a GraphedUmt5's, which its graphs read; None: its own). nan_to_num: the token embeddings' NaNs zeroed,
    as ComfyUI's T5 does when its dtype is an FP8 one."""

    def __init__(self, state: Mapping[str, torch.Tensor], scratch: torch.Tensor | None = None,
                 nan_to_num: bool = False):
        self.embedding = state.get("shared.weight")
        if self.embedding is None:
            raise CheckpointError("umt5: the weights have no shared.weight (not a T5 encoder's weights)")
        count = 0
        while f"encoder.block.{count}.layer.0.layer_norm.weight" in state:
            count += 1
        if not count:
            raise CheckpointError("umt5: no encoder.block.0.layer.0.layer_norm.weight: not a T5 encoder's weights")
        self.layers = [_layer(state, f"encoder.block.{i}.layer.") for i in range(count)]
        self.final_norm = _tensor(state, "encoder.final_layer_norm.weight")
        self.heads = self.layers[0].position_bias.shape[1]
        widest = max(lin.weight.numel() for layer in self.layers for lin in _linears(layer))
        if scratch is not None and scratch.numel() < widest:
            raise ValueError(f"umt5: a scratch of {scratch.numel()} values, and its widest weight holds {widest}")
        self.scratch = torch.empty(widest, dtype=torch.bfloat16, device=self.embedding.device) \
            if scratch is None else scratch
        self.nan_to_num = nan_to_num

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
        """count: a tensor holding how many of the ids are the text's (the rest padding, masked out of attention);
        None: all."""
        x = F.embedding(ids, self.embedding).to(torch.float32)
        if self.nan_to_num:
            x = torch.nan_to_num(x)
        buckets = position_buckets(ids.shape[1], ids.device)
        masked = None if count is None else torch.arange(ids.shape[1], device=ids.device) >= count
        for layer in self.layers:
            bias = F.embedding(buckets, layer.position_bias.to(torch.float32)).permute(2, 0, 1).unsqueeze(0)
            if masked is not None:
                bias = bias.masked_fill(masked, -math.inf)
            x += layer.o(self._attention(_norm(x, layer.attention_norm), layer, bias), self.scratch)
            h = _norm(x, layer.ff_norm)
            gated = F.gelu(layer.gate(h, self.scratch), approximate="tanh") * layer.up(h, self.scratch)
            x += layer.down(gated, self.scratch)
        return _norm(x, self.final_norm)

    def _attention(self, h: torch.Tensor, layer: Layer, bias: torch.Tensor) -> torch.Tensor:
        """T5's attention is unscaled: k times sqrt(head dim) against SDPA's default scale, as ComfyUI has it (both
        powers of two: exact)."""
        batch, tokens, width = h.shape
        q, k, v = (lin(h, self.scratch).view(batch, tokens, self.heads, -1).transpose(1, 2)
                   for lin in (layer.q, layer.k, layer.v))
        out = F.scaled_dot_product_attention(q, k * (width / self.heads) ** 0.5, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(batch, tokens, width)


class GraphedUmt5:
    """An Umt5Encoder's work replayed from CUDA graphs, one per bucket of token counts (TOKEN_BUCKETS; the buckets up
    to WARM_BUCKETS captured at the first call), on a stream of high priority, ahead of a block's decode that may run
    beside it (11-13 ms of GPU time a text, run 149; a live run's encodes of posted texts 17-43 ms, run 153). It holds
    no weights: each call passes an encoder on the weights as they are, made with its scratch; a graph reads the
    weights' addresses, so the caller makes a new one where they moved. Where a capture fails (fast/graphs.py says
    why), it encodes eagerly from then on; a text past the largest bucket is encoded eagerly. One call at a time (its
    graphs share their inputs, outputs and scratch)."""

    def __init__(self, scratch: torch.Tensor):
        self.scratch, self.device = scratch, scratch.device
        self.graphs: dict[int, tuple] = {}  # bucket -> (graph, ids, count, out)
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.device, priority=-1)
        self.failed: str | None = None
        self._lock = threading.Lock()

    def __call__(self, ids: torch.Tensor, encoder: Umt5Encoder) -> torch.Tensor:
        """ids [1, T] -> float32 [1, T, d]."""
        if encoder.scratch is not self.scratch:
            raise ValueError("umt5: the encoder widens its weights elsewhere than this one's graphs read them")
        with self._lock:
            return self._encode(ids, encoder)

    def _encode(self, ids: torch.Tensor, encoder: Umt5Encoder) -> torch.Tensor:
        tokens = ids.shape[1]
        bucket = next((b for b in TOKEN_BUCKETS if b >= tokens), None)
        if not self.graphs:
            for warm in TOKEN_BUCKETS[:WARM_BUCKETS]:
                if self.failed is None:  # a failed capture ends the warm-up
                    self._capture(warm, encoder)
        if bucket is not None and bucket not in self.graphs and self.failed is None:
            self._capture(bucket, encoder)
        if bucket is None or bucket not in self.graphs:
            return encoder(ids)
        graph, static_ids, count, out = self.graphs[bucket]
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # the ids, and the last call's copy of `out`
        with torch.cuda.stream(self.stream):
            static_ids.zero_()
            static_ids[:, :tokens].copy_(ids)
            count.fill_(tokens)
            graph.replay()
        current.wait_stream(self.stream)
        return out[:, :tokens].clone()

    def _capture(self, bucket: int, encoder: Umt5Encoder) -> None:
        from ..fast.graphs import CaptureError, capture

        ids = torch.zeros(1, bucket, dtype=torch.long, device=self.device)
        count = torch.full((), bucket, dtype=torch.long, device=self.device)
        encoder(ids, count)  # compiles the Triton kernel, sets up cuBLAS
        try:
            graph, out = capture(lambda: encoder(ids, count), self.device, self.pool)
        except CaptureError as err:
            self.failed = str(err)
            log.warning("the umt5 encoder runs without CUDA graphs: %s", err)
            return
        graph.replay()  # its allocations made real (under cudaMallocAsync, freeing them before would abort)
        self.graphs[bucket] = (graph, ids, count, out)


def position_buckets(tokens: int, device: torch.device) -> torch.Tensor:
    """T5's bidirectional relative position buckets [tokens, tokens] (query, key): half a direction; within each,
    exact offsets up to a quarter of the buckets, then log-spaced up to MAX_DISTANCE."""
    position = torch.arange(tokens, device=device, dtype=torch.long)
    offset = position[None, :] - position[:, None]
    half = BUCKETS // 2
    exact = half // 2
    distance = offset.abs()
    log_scale = torch.log(distance.float() / exact) / math.log(MAX_DISTANCE / exact)
    far = exact + (log_scale * (half - exact)).to(torch.long)
    far = torch.minimum(far, torch.full_like(far, half - 1))
    return (offset > 0).to(torch.long) * half + torch.where(distance < exact, distance, far)


def _norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """T5's RMSNorm, rounded as ComfyUI's: x / rms in float32, times the weight cast to float32."""
    return weight.to(torch.float32) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def _linears(layer: Layer) -> tuple[Linear, ...]:
    return layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down


def _layer(state: Mapping[str, torch.Tensor], prefix: str) -> Layer:
    attention, ff = prefix + "0.SelfAttention.", prefix + "1.DenseReluDense."
    return Layer(attention_norm=_tensor(state, prefix + "0.layer_norm.weight"),
                 **{name: _linear(state, attention + name) for name in ("q", "k", "v", "o")},
                 position_bias=_tensor(state, attention + "relative_attention_bias.weight"),
                 ff_norm=_tensor(state, prefix + "1.layer_norm.weight"), gate=_linear(state, ff + "wi_0"),
                 up=_linear(state, ff + "wi_1"), down=_linear(state, ff + "wo"))


def _linear(state: Mapping[str, torch.Tensor], name: str) -> Linear:
    weight, scale = _tensor(state, name + ".weight"), state.get(name + ".scale_weight")
    if weight.dtype not in STORED:
        raise CheckpointError(f"umt5: {name}.weight is {weight.dtype}; the engine's encoder takes "
                              f"{' or '.join(map(str, STORED))} weights (ComfyUI's encoder runs the others)")
    if scale is not None and scale.numel() != 1:
        raise CheckpointError(f"umt5: {name}.scale_weight holds {scale.numel()} values; a scaled weight has one")
    return Linear(weight, scale)


def _tensor(state: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    tensor = state.get(name)
    if tensor is None:
        raise CheckpointError(f"umt5: the weights have no {name} (not umt5-xxl's encoder, or a umt5 without "
                              f"per-layer position biases)")
    return tensor
