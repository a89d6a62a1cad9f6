"""GPU micro-benchmark of the kernels one layer pass is made of, at the steady LongLive shape
(480x832: 4680 query tokens, window 12 -> 18720 keys, 512 text keys, dim 1536, 12 heads, FFN 8960).

    python scripts/bench_kernels.py [--json PATH]

Rows: bf16 GEMMs (separate and fused q/k/v, the FFN up-projection with a separate GELU and with
cuBLASLt's GELU epilogue), the same GEMMs in row-wise and in tensor-wise FP8 (torch._scaled_mm) with
the cost of quantizing their activations, and attention: FlashAttention-3 in bf16 with 1-3 KV splits, cuDNN,
FA3 in FP8 with per-head scales plus the cost of quantizing q/k/v, and the text cross-attention.
Times: CUDA-graph replays over rotated inputs (see `timed`); errors are relative (‖a-b‖/‖b‖).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from longlive_core.attention import E4M3_MAX as E4M3  # noqa: E402
from longlive_core.quantize import rowwise_fp8  # noqa: E402

TOKENS, KEYS, TEXT, DIM, HEADS, FFN = 4680, 18720, 512, 1536, 12, 8960
ROTATE = 4  # input sets, so that repeated runs do not measure the L2 cache


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="bench_kernels.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list = []
    with torch.inference_mode():
        gemm_rows(rows)
        attention_rows(rows)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(info, f, indent=1)
    sys.stdout.write(f"\n{info['device']}, torch {info['torch']}\n| kernel | ms | rel err |\n|---|---|---|\n")
    for r in rows:
        err = r.get("rel_err", r.get("rel_err_vs_separate"))
        sys.stdout.write(f"| {r['row']} | {r['ms']:.3f} | {'' if err is None else f'{err:.1e}'} |\n")


if __name__ == "__main__":
    main()
