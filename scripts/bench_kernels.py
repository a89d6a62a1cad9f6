"""GPU micro-benchmark of the kernels one layer pass is made of, at the steady LongLive shape
(480x832: 4680 query tokens, window 12 -> 18720 keys, 512 text keys, dim 1536, 12 heads, FFN 8960).

    PYTHONPATH=. python scripts/bench_kernels.py [--sections gemm,attention,norms,text,epilogue,fp8_gelu,scaling] [--json PATH]

Sections. gemm: bf16 GEMMs (separate and fused q/k/v, the FFN up-projection with a separate GELU and with
cuBLASLt's GELU epilogue), the same GEMMs in row-wise and in tensor-wise FP8 (torch._scaled_mm) with the cost of
quantizing their activations. attention: FlashAttention-3 in bf16 with 1-3 KV splits, cuDNN, FA3 in FP8 with
per-head scales plus the cost of quantizing q/k/v, and the text cross-attention. norms: inductor's fusion of the
norms, residuals, RoPE and cache writes against the Triton kernels (kernels/ops.py) at several launch shapes.
text: the text cross-attention, the prefix path against the Triton kernel. epilogue: the FFN up-projection's
GELU in cuBLASLt's epilogue against inductor's GEMM template. fp8_gelu: the FP8 FFN's GELU + row-wise
quantization, inductor against the Triton kernel.
scaling: FA3 at other query counts (its waves), the tail of the engine's wave cut with 1-11 key splits, the
engine's cut attention, and the GEMMs at twice the rows.
Times: CUDA-graph replays over rotated inputs (see `timed`); errors are relative (‖a-b‖/‖b‖).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from longlive_core.kernels import ops as kernels  # noqa: E402
from longlive_core.model.attention import resolve, wave_split  # noqa: E402
from longlive_core.model.wan import RopeTable, apply_rope, layer_norm  # noqa: E402
from longlive_core.quant.fp8 import E4M3_MAX as E4M3, rowwise_fp8  # noqa: E402

TOKENS, KEYS, TEXT, DIM, HEADS, FFN = 4680, 18720, 512, 1536, 12, 8960
ROTATE = 4  # input sets, so that repeated runs do not measure the L2 cache
LAUNCHES = ((1, 4), (1, 8), (2, 4), (2, 8), (4, 4), (4, 8), (8, 8))  # (rows per program, warps) of the Triton kernels


def timed(fn, args_sets, reps: int = 12) -> float:
    """ms per call of fn(*args), from CUDA-graph replays of `reps` calls cycling through the argument
    sets (no launch overhead, as inside the pipeline's graphs); the median of 10 replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compiles, autotunes, allocates
        for a in args_sets:
            fn(*a)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(*args_sets[i % len(args_sets)])
    graph.replay()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax().float().clamp(min=1e-12) / E4M3
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, S, H, D] -> e4m3 values and descales [B, H] (one scale per batch and head)."""
    scale = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-12) / E4M3
    return (x.float() / scale[:, None, :, None]).to(torch.float8_e4m3fn), scale


def gemm_rows(rows: list) -> None:
    def randn(*shape):
        return [(torch.randn(*shape, device="cuda", dtype=torch.bfloat16),) for _ in range(ROTATE)]

    w = {n: torch.randn(o, i, device="cuda", dtype=torch.bfloat16) * i ** -0.5
         for n, (o, i) in {"q": (DIM, DIM), "qkv": (3 * DIM, DIM), "up": (FFN, DIM), "down": (DIM, FFN)}.items()}
    b_up = torch.randn(FFN, device="cuda", dtype=torch.bfloat16) * 0.1
    xs, hs = randn(TOKENS, DIM), randn(TOKENS, FFN)
    rows.append({"row": "gemm bf16 q (x3 for q, k, v)", "ms": timed(lambda x: x @ w["q"].t(), xs)})
    rows.append({"row": "gemm bf16 fused qkv", "ms": timed(lambda x: x @ w["qkv"].t(), xs)})
    rows.append({"row": "gemm bf16 ffn up + separate gelu",
                 "ms": timed(lambda x: F.gelu(F.linear(x, w["up"], b_up), approximate="tanh"), xs)})
    fused = torch._addmm_activation(b_up, xs[0][0], w["up"].t(), use_gelu=True)
    rows.append({"row": "gemm bf16 ffn up, cuBLASLt gelu epilogue",
                 "ms": timed(lambda x: torch._addmm_activation(b_up, x, w["up"].t(), use_gelu=True), xs),
                 "rel_err_vs_separate": rel(fused, F.gelu(F.linear(xs[0][0], w["up"], b_up), approximate="tanh"))})
    rows.append({"row": "gemm bf16 ffn down", "ms": timed(lambda h: h @ w["down"].t(), hs)})
    quant = torch.compile(rowwise_fp8)
    for name, inputs in (("q", xs), ("qkv", xs), ("up", xs), ("down", hs)):
        wq, ws = rowwise_fp8(w[name])
        ws = ws.t().contiguous()
        acts = [quant(x) for (x,) in inputs]
        ms = timed(lambda a, s: torch._scaled_mm(a, wq.t(), scale_a=s, scale_b=ws, out_dtype=torch.bfloat16), acts)
        out = torch._scaled_mm(acts[0][0], wq.t(), scale_a=acts[0][1], scale_b=ws, out_dtype=torch.bfloat16)
        rows.append({"row": f"gemm fp8 row-wise {name}", "ms": ms, "rel_err": rel(out, inputs[0][0] @ w[name].t())})
    rows.append({"row": "quantize activations [4680, 1536] (compiled)", "ms": timed(quant, xs)})
    rows.append({"row": "quantize activations [4680, 8960] (compiled)", "ms": timed(quant, hs)})
    whole = torch.compile(tensorwise)
    for name, inputs in (("q", xs), ("qkv", xs), ("up", xs), ("down", hs)):
        wq, ws = tensorwise(w[name])
        acts = [whole(x) for (x,) in inputs]
        ms = timed(lambda a, s: torch._scaled_mm(a, wq.t(), scale_a=s, scale_b=ws, out_dtype=torch.bfloat16), acts)
        out = torch._scaled_mm(acts[0][0], wq.t(), scale_a=acts[0][1], scale_b=ws, out_dtype=torch.bfloat16)
        rows.append({"row": f"gemm fp8 tensor-wise {name}", "ms": ms, "rel_err": rel(out, inputs[0][0] @ w[name].t())})
    rows.append({"row": "quantize activations tensor-wise [4680, 1536] (compiled)", "ms": timed(whole, xs)})


def attention_rows(rows: list) -> None:
    import fa3_fwd_interface as fa3

    def qkv(keys):
        return [tuple(torch.randn(1, n, HEADS, DIM // HEADS, device="cuda", dtype=torch.bfloat16)
                      for n in (TOKENS, keys, keys)) for _ in range(ROTATE)]

    sets = qkv(KEYS)
    ref = fa3.flash_attn_func(*sets[0])
    for splits in (1, 2, 3):
        out = fa3.flash_attn_func(*sets[0], num_splits=splits)
        rows.append({"row": f"self-attention fa3 bf16, num_splits={splits}",
                     "ms": timed(lambda q, k, v: fa3.flash_attn_func(q, k, v, num_splits=splits), sets),
                     "rel_err": rel(out, ref)})
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn(q, k, v):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    rows.append({"row": "self-attention cudnn bf16", "ms": timed(cudnn, sets)})
    quant = torch.compile(per_head)
    fp8_sets = [(*quant(q), *quant(k), *quant(v)) for q, k, v in sets]

    def fa3_fp8(q, qs, k, ks, v, vs):
        return fa3.flash_attn_func(q, k, v, q_descale=qs, k_descale=ks, v_descale=vs)

    rows.append({"row": "self-attention fa3 fp8 (per-head scales)", "ms": timed(fa3_fp8, fp8_sets),
                 "rel_err": rel(fa3_fp8(*fp8_sets[0]), ref)})
    rows.append({"row": "quantize q per head [4680 tokens] (compiled)", "ms": timed(quant, [(s[0],) for s in sets])})
    rows.append({"row": "quantize k per head [18720 tokens] (compiled)", "ms": timed(quant, [(s[1],) for s in sets])})
    text = qkv(TEXT)
    rows.append({"row": "cross-attention fa3 bf16 (512 keys)", "ms": timed(lambda q, k, v: fa3.flash_attn_func(q, k, v), text)})
    rows.append({"row": "cross-attention cudnn bf16 (512 keys)", "ms": timed(cudnn, text)})


def norm_rows(rows: list) -> None:
    """The memory-bound work around the GEMMs: inductor's fusion of the eager expressions against the
    Triton kernels (kernels/ops.py); GB/s counts each tensor read or written once."""
    bf = dict(device="cuda", dtype=torch.bfloat16)
    mb = TOKENS * DIM * 2 / 1e6  # one [tokens, dim] bf16 tensor
    ins = [tuple(torch.randn(1, TOKENS, DIM, **bf) for _ in range(2)) for _ in range(ROTATE)]
    mod = torch.randn(1, 6, DIM, device="cuda")
    w, b = torch.randn(DIM, **bf), torch.randn(DIM, **bf)

    def modulated(x, y):
        return (layer_norm(x, 1e-6) * (1 + mod[:, 1:2]) + mod[:, 0:1]).type_as(x)

    def gated_affine(x, y):
        x = (x.float() + y.float() * mod[:, 2:3]).type_as(x)
        return x, F.layer_norm(x.float(), (DIM,), w.float(), b.float(), 1e-6).type_as(x)

    def added_modulated(x, y):
        x = x + y
        return x, modulated(x, None)

    cases = (("norm + modulation", modulated, 2, lambda x, y: kernels.norm_affine(x, mod[:, 1:2], mod[:, 0:1], 1e-6, True)),
             ("gated residual + affine norm", gated_affine, 4,
              lambda x, y: kernels.add_norm_affine(x, y, mod[:, 2:3], w, b, 1e-6, False)),
             ("residual + norm + modulation", added_modulated, 4,
              lambda x, y: kernels.add_norm_affine(x, y, None, mod[:, 4:5], mod[:, 3:4], 1e-6, True)))
    chosen = kernels.GPU_LAUNCH["norm"]
    for name, ref, tensors, fused in cases:
        rows.append({"row": f"{name}, inductor", "ms": (ms := timed(torch.compile(ref), ins)), "GB/s": tensors * mb / ms})
        for launch in LAUNCHES:
            kernels.GPU_LAUNCH["norm"] = launch
            rows.append({"row": f"{name}, triton {launch}", "ms": (ms := timed(fused, ins)), "GB/s": tensors * mb / ms})
    kernels.GPU_LAUNCH["norm"] = chosen
    qkv_rows(rows, mb)


def qkv_rows(rows: list, mb: float) -> None:
    bf = dict(device="cuda", dtype=torch.bfloat16)
    heads, hd = HEADS, DIM // HEADS
    cos, sin = RopeTable(hd, "cuda").cos_sin(12, 3, 30, 52)
    index = torch.randperm(KEYS, device="cuda")[:TOKENS]
    wq, wk = torch.randn(DIM, **bf), torch.randn(DIM, **bf)
    qkvs = [(torch.randn(1, TOKENS, 3 * DIM, **bf),) for _ in range(ROTATE)]

    def rms(x, weight):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * weight

    for dtype, kernel in ((torch.bfloat16, "qkv"), (torch.float8_e4m3fn, "qkv fp8")):
        chosen = kernels.GPU_LAUNCH[kernel]
        ck, cv = (torch.zeros(1, KEYS, heads, hd, device="cuda", dtype=dtype) for _ in range(2))
        steps = torch.full((3, heads), 0.05, device="cuda")

        def ref(qkv):
            q, k, v = qkv.chunk(3, -1)
            k = apply_rope(rms(k, wk).unflatten(-1, (heads, hd)), cos, sin)
            v = v.unflatten(-1, (heads, hd))
            if dtype != torch.bfloat16:
                k, v = ((t.float() / s[:, None]).clamp(-E4M3, E4M3).to(dtype) for t, s in ((k, steps[1]), (v, steps[2])))
            ck.index_copy_(1, index, k)
            cv.index_copy_(1, index, v)
            return apply_rope(rms(q, wq).unflatten(-1, (heads, hd)), cos, sin)

        def fused(qkv):
            return kernels.qkv_norm_rope_write(qkv, wq, wk, cos, sin, index, ck, cv, steps, heads, 1e-6)

        size = 3 * mb + mb + (2 * mb if dtype == torch.bfloat16 else mb)
        name = f"q/k/v norm + rope + {str(dtype)[6:]} cache write"
        rows.append({"row": f"{name}, inductor", "ms": (ms := timed(torch.compile(ref), qkvs)), "GB/s": size / ms})
        for launch in LAUNCHES:
            kernels.GPU_LAUNCH[kernel] = launch
            rows.append({"row": f"{name}, triton {launch}", "ms": (ms := timed(fused, qkvs)), "GB/s": size / ms})
        kernels.GPU_LAUNCH[kernel] = chosen
    q = [(torch.randn(1, TOKENS, DIM, **bf),) for _ in range(ROTATE)]
    rows.append({"row": "cross q rmsnorm, inductor", "ms": (ms := timed(torch.compile(lambda x: rms(x, wq)), q)),
                 "GB/s": 2 * mb / ms})


def text_rows(rows: list) -> None:
    """The text cross-attention of the fast path: the compiled q RMSNorm, FA3 over the prompt's keys and the
    padding-key merge (the prefix path of attention.py) against the Triton kernel (kernels.text_attention) at
    several launch shapes; prompts of 128 tokens (the bench's) and 512 (no padding). Errors: against SDPA over
    all 512 keys."""
    from longlive_core.model.attention import _prefix_text, _sdpa
    from longlive_core.model.cache import TextCache
    import fa3_fwd_interface as fa3

    bf = dict(device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(DIM, **bf)
    qs = [(torch.randn(1, TOKENS, DIM, **bf),) for _ in range(ROTATE)]

    def rms(x):
        xf = x.float()
        return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * weight).unflatten(-1, (HEADS, -1))

    prefix, normed = _prefix_text(fa3), torch.compile(rms)
    chosen = kernels.GPU_LAUNCH["text"]
    for used in (128, TEXT):
        text = TextCache.allocate(1, 1, TEXT, HEADS, DIM // HEADS, "cuda", torch.bfloat16).layer(0)
        text.k.normal_(), text.v.normal_()
        embeds = torch.ones(1, TEXT, 1, device="cuda")
        embeds[:, used:] = 0
        pad = text.set_used(embeds)
        text.k[:, used:], text.v[:, used:] = text.k[:, pad], text.v[:, pad]
        text.pad_k.copy_(text.k[:, pad]), text.pad_v.copy_(text.v[:, pad])
        ref = _sdpa(rms(qs[0][0]), text.k, text.v)
        out = prefix(normed(qs[0][0]), text)
        rows.append({"row": f"text attention, {used}-token prompt: inductor rmsnorm + fa3 prefix + merge",
                     "ms": timed(lambda x: prefix(normed(x), text), qs), "rel_err": rel(out, ref)})

        def fused(x):
            return kernels.text_attention(x, weight, 1e-6, text.k, text.v, text.used, text.pad_k, text.pad_v,
                                          text.log_pad)

        for launch in ((64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 1), (64, 128, 4, 2), (128, 64, 8, 1),
                       (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (32, 64, 4, 1), (32, 64, 2, 1)):
            kernels.GPU_LAUNCH["text"] = launch
            rows.append({"row": f"text attention, {used}-token prompt: triton {launch}", "ms": timed(fused, qs),
                         "rel_err": rel(fused(qs[0][0]), ref)})
        kernels.GPU_LAUNCH["text"] = chosen


def epilogue_rows(rows: list) -> None:
    """The FFN's up-projection with its tanh GELU: plain GEMM, cuBLASLt's GELU epilogue (the fast path) and
    inductor's Triton GEMM template with the GELU fused (max-autotune)."""
    bf = dict(device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(FFN, DIM, **bf) * DIM ** -0.5, torch.randn(FFN, **bf) * 0.1
    xs = [(torch.randn(TOKENS, DIM, **bf),) for _ in range(ROTATE)]

    def up(x):
        return F.gelu(F.linear(x, w, b), approximate="tanh")

    rows.append({"row": "ffn up, plain gemm + bias", "ms": timed(lambda x: F.linear(x, w, b), xs)})
    rows.append({"row": "ffn up, cublaslt gelu epilogue",
                 "ms": timed(lambda x: torch._addmm_activation(b, x, w.t(), use_gelu=True), xs)})
    tuned = torch.compile(up, mode="max-autotune-no-cudagraphs")
    rows.append({"row": "ffn up, inductor max-autotune gemm + gelu", "ms": timed(tuned, xs),
                 "rel_err": rel(tuned(xs[0][0]), up(xs[0][0]))})


def fp8_gelu_rows(rows: list) -> None:
    """The FP8 FFN's GELU + row-wise quantization of the hidden activations [4680, 8960]: inductor's fusion of the
    torch ops against the Triton kernel (quant/linears.gelu_rowwise_fp8) at several launches (values a step, warps);
    GB/s counts the bf16 read and the e4m3 write once."""
    from longlive_core.quant import linears as quantize

    hs = [(torch.randn(TOKENS, FFN, device="cuda", dtype=torch.bfloat16) * 2,) for _ in range(ROTATE)]
    mb = TOKENS * FFN * 3 / 1e6
    ops = torch.compile(lambda h: rowwise_fp8(F.gelu(h, approximate="tanh")))
    rows.append({"row": "gelu + fp8 rows, inductor", "ms": (ms := timed(ops, hs)), "GB/s": mb / ms})
    want = ops(hs[0][0])
    chosen = quantize.GELU_LAUNCH
    for launch in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (16384, 16)):
        quantize.GELU_LAUNCH = launch
        values, scales = quantize.gelu_rowwise_fp8(hs[0][0])
        rows.append({"row": f"gelu + fp8 rows, triton {launch}", "ms": (ms := timed(quantize.gelu_rowwise_fp8, hs)),
                     "GB/s": mb / ms, "rel_err": rel(values.float() * scales, want[0].float() * want[1])})
    quantize.GELU_LAUNCH = chosen


def scaling_rows(rows: list) -> None:
    """Does twice the tokens in one pass (a clean pass run with the next block's first step) cost less
    than two passes? FA3 at other query counts (wave quantization: 128-query tiles x 12 heads over 132
    SMs) and the GEMMs at 2 x 4680 rows."""
    import fa3_fwd_interface as fa3

    bf = dict(device="cuda", dtype=torch.bfloat16)
    for batch, tokens in ((1, 4224), (1, 4680), (1, 5632), (2, 4680)):
        sets = [tuple(torch.randn(batch, n, HEADS, DIM // HEADS, **bf) for n in (tokens, KEYS, KEYS))
                for _ in range(2)]
        rows.append({"row": f"fa3 bf16 {batch} x {tokens} queries, {KEYS} keys",
                     "ms": timed(lambda q, k, v: fa3.flash_attn_func(q, k, v), sets)})
    tail = [tuple(torch.randn(1, n, HEADS, DIM // HEADS, **bf) for n in (456, KEYS, KEYS)) for _ in range(2)]
    for splits in (1, 2, 3, 4, 5, 8, 11):
        rows.append({"row": f"fa3 bf16 1 x 456 queries (the rest after 3 waves), num_splits={splits}",
                     "ms": timed(lambda q, k, v: fa3.flash_attn_func(q, k, v, num_splits=splits), tail)})
    sets = [tuple(torch.randn(1, n, HEADS, DIM // HEADS, **bf) for n in (TOKENS, KEYS, KEYS)) for _ in range(2)]
    ref = fa3.flash_attn_func(*sets[0])
    for name in ("flash-attn 3", "flash-attn 3 fp8"):
        attend = resolve(name, "cuda", True)[1]
        scales = torch.full((3, HEADS), 0.02, device="cuda")
        if name.endswith("fp8"):  # k, v as the FP8 cache holds them
            sets = [(q, *((t.float() / 0.02).to(torch.float8_e4m3fn) for t in (k, v))) for q, k, v in sets]
        split = wave_split(1, TOKENS, HEADS, torch.cuda.get_device_properties(0).multi_processor_count)
        rows.append({"row": f"engine {name}, {TOKENS} queries cut into whole waves + the rest split {split}",
                     "ms": timed(lambda q, k, v: attend(q, k, v, scales), sets),
                     "rel_err": rel(attend(*sets[0], scales), ref)})
    for name, (o, i) in {"qkv": (3 * DIM, DIM), "o": (DIM, DIM), "up": (FFN, DIM), "down": (DIM, FFN)}.items():
        w = torch.randn(o, i, **bf) * i ** -0.5
        for m in (TOKENS, 2 * TOKENS):
            xs = [(torch.randn(m, i, **bf),) for _ in range(2)]
            rows.append({"row": f"gemm bf16 {name} at {m} rows", "ms": timed(lambda x: x @ w.t(), xs)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="bench_kernels.json")
    parser.add_argument("--sections", default="gemm,attention,norms,scaling",
                        help="comma-separated: gemm, attention, norms, text, epilogue, fp8_gelu, scaling")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list = []
    sections = {"gemm": gemm_rows, "attention": attention_rows, "norms": norm_rows, "text": text_rows,
                "epilogue": epilogue_rows, "fp8_gelu": fp8_gelu_rows, "scaling": scaling_rows}
    with torch.inference_mode():
        for name in args.sections.split(","):
            sections[name](rows)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(info, f, indent=1)
    sys.stdout.write(f"\n{info['device']}, torch {info['torch']}\n| kernel | ms | rel err | GB/s |\n|---|---|---|---|\n")
    for r in rows:
        err = r.get("rel_err", r.get("rel_err_vs_separate"))
        rate = f"{r['GB/s']:.0f}" if "GB/s" in r else ""
        sys.stdout.write(f"| {r['row']} | {r['ms']:.3f} | {'' if err is None else f'{err:.1e}'} | {rate} |\n")


if __name__ == "__main__":
    main()
