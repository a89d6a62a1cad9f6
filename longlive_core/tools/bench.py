"""GPU benchmark: the eager reference path against the fast path, on random full-size weights.

    python -m longlive_core.bench [--rows main,fp8-attention,window9,batch,fp8,fp8-all,v2,v2-fp8,...] [--profile]
                                  [--json PATH]

Every LongLive 1.x row generates the same schedule (20 blocks, prompt switches at frames 24 and 42, prompts of
128 tokens) and reports ms per block and per latent frame in steady state, the extra stream time of each switch,
the first block, peak GPU memory, frames per second, and the max relative difference of the
latents from the eager bf16 path (same seed, same prompts). The LongLive 2.0 rows (v2, v2-fp8, v2-fp8-all:
Wan2.2-TI2V-5B's shapes at 704x1280, 8-frame blocks, window 32, sink 8) make 8 blocks with a scene cut at block 5,
eager and fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time

import torch

from ..fast.runner import GraphRunner, warm_up
from ..fast.setup import make_fast
from ..model.attention import FP8
from ..model.config import WanConfig
from ..quant.precision import resolve
from ..model.config import LONGLIVE_2_5B
from ..runtime.session import StreamSession
from ..runtime.shots import ShotSession
from .synthetic import random_model
from .verify import block_errors

log = logging.getLogger("longlive_core.bench")

BLOCKS = 20
SWITCH_BLOCKS = (8, 14)
HEIGHT, WIDTH = 480, 832
PROMPT_TOKENS = 128  # LongLive's prompts are a paragraph: about 100-200 umt5 tokens
ROWS = ("main", "relative", "long", "unfused", "fp8-attention", "cross-sdpa", "window9", "batch", "fp8", "fp8-all",
        "int8-weight-only", "int8-dynamic", "v2", "v2-fp8", "v2-fp8-all")
LONG_BLOCKS = 1000  # 3,000 latent frames: past frame 1024 twice over
LONG_SWITCH_BLOCKS = (400, 690)  # latent frames 1200 and 2070
V2_BLOCKS, V2_CUT_BLOCK = 8, 5  # LongLive 2.0: 64 latent frames (the window of 32 is full from block 3), a cut
V2_LATENT_HW = (704 // 16, 1280 // 16)


def prompts(batch: int, text_dim: int, count: int, device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(1234)
    out = []
    for _ in range(count):
        e = torch.randn(batch, 512, text_dim, generator=gen, device=device) * 0.1
        e[:, PROMPT_TOKENS:] = 0  # zeros after the prompt's tokens, as umt5 embeddings come padded
        out.append(e)
    return out


def run_stream(model, runner, *, batch=1, window=12, sink=3, blocks=BLOCKS, seed=0, position_mode="absolute",
               switch_blocks=SWITCH_BLOCKS, keep_latents=True) -> dict:
    """Generates `blocks` blocks with the standard schedule (time_blocks)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    session = StreamSession(model, batch=batch, height=HEIGHT, width=WIDTH, local_attn_size=window,
                            sink_size=sink, seed=seed, runner=runner(model) if runner else None,
                            position_mode=position_mode)
    warm_up(session)
    embeds = prompts(batch, model.cfg.text_dim, len(switch_blocks) + 1, model.device)
    session.set_schedule([(0, embeds[0])] + [(3 * b, e) for b, e in zip(switch_blocks, embeds[1:])])
    return time_blocks(session, blocks, t0, keep_latents)


def run_shots(model, runner) -> dict:
    """LongLive 2.0: V2_BLOCKS blocks at 704x1280, a new prompt starting a new shot at block V2_CUT_BLOCK."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    session = ShotSession(model, batch=1, latent_hw=V2_LATENT_HW, runner=runner(model) if runner else None)
    warm_up(session)
    first, cut = prompts(1, model.cfg.text_dim, 2, model.device)
    session.set_prompt(first)
    session.set_prompt(cut, at_frame=session.settings.block * V2_CUT_BLOCK, cut=True)
    return time_blocks(session, V2_BLOCKS, t0)


def time_blocks(session, blocks: int, t0: float, keep_latents: bool = True) -> dict:
    """Makes `blocks` blocks of a session whose prompts are scheduled; block times from CUDA events, the allocated
    GPU memory after each block (a host-side counter: no sync); t0: when the session's making began."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(blocks + 1)]
    events[0].record()
    latents, first_ms, allocated = [], None, []
    for i in range(blocks):
        block = session.step_block()
        latents.append(block if keep_latents else None)
        events[i + 1].record()
        allocated.append(torch.cuda.memory_allocated() / 2**30)
        if i == 0:
            torch.cuda.synchronize()
            first_ms = (time.perf_counter() - t0) * 1e3
        if i % 100 == 0 or i < 20:
            log.info("block %d queued after %.0f ms", i, (time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    ms = [events[i].elapsed_time(events[i + 1]) for i in range(blocks)]
    return {"block_ms": ms, "first_block_ms": first_ms, "allocated_gib": allocated,
            "latents": torch.cat(latents, 1).float() if keep_latents else block.float(),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def summarize(name: str, run: dict, reference: torch.Tensor | None, batch: int,
              switch_blocks=SWITCH_BLOCKS, block: int = 3, first_steady: int = 5, switch_offsets=(-1, 0)) -> dict:
    """block: latent frames a block (a steady latent frame is 4 pixel frames); steady blocks from first_steady on but
    those a switch changes (switch_offsets from each switch block: the switching block recaches and skips the clean
    pass the block before it owes)."""
    ms = run["block_ms"]
    near_switch = {b + d for b in switch_blocks for d in switch_offsets}
    steady = statistics.median(m for i, m in enumerate(ms) if i >= first_steady and i not in near_switch)
    switches = [sum(ms[b + d] for d in switch_offsets) - len(switch_offsets) * steady for b in switch_blocks]
    row = {"row": name, "batch": batch, "block": block, "ms_per_block": steady, "ms_per_latent_frame": steady / block,
           "switch_extra_ms": switches, "first_block_ms": run["first_block_ms"], "peak_gib": run["peak_gib"],
           "latent_fps": block * batch * 1e3 / steady, "pixel_fps": 4 * block * batch * 1e3 / steady,
           "block_ms_all": ms}
    if reference is not None and reference.shape == run["latents"].shape:
        row["max_rel_diff_vs_eager"] = max_block_diff(run["latents"], reference, block)
    return row


def long_row(fast_model) -> dict:
    """A relative-position session of 3,000 latent frames with switches past frames 1024 and 2048: block time and
    allocated memory over its first and its last hundred blocks."""
    run = run_stream(fast_model, GraphRunner, blocks=LONG_BLOCKS, position_mode="relative",
                     switch_blocks=LONG_SWITCH_BLOCKS, keep_latents=False)
    row = summarize(f"fast bf16 w12 s3 relative, {3 * LONG_BLOCKS} latent frames", run, None, 1, LONG_SWITCH_BLOCKS)
    near_switch = {b + d for b in LONG_SWITCH_BLOCKS for d in (-1, 0)}
    for part, span in (("start", range(5, 105)), ("end", range(LONG_BLOCKS - 100, LONG_BLOCKS))):
        row[f"{part}_ms_per_block"] = statistics.median(run["block_ms"][i] for i in span if i not in near_switch)
        row[f"{part}_allocated_gib"] = max(run["allocated_gib"][i] for i in span)
    row["latents_finite"] = bool(torch.isfinite(run["latents"]).all())
    return row


def max_block_diff(latents: torch.Tensor, reference: torch.Tensor, block: int = 3) -> float:
    return max(block_errors(latents, reference, block))


def profile_block(model, runner, out_path: str | None) -> dict:
    """Kernel-time breakdown of one steady block, per layer per pass."""
    from torch.profiler import ProfilerActivity, profile

    session = StreamSession(model, height=HEIGHT, width=WIDTH, runner=runner(model) if runner else None)
    warm_up(session)
    session.set_prompt(prompts(1, model.cfg.text_dim, 1, model.device)[0])
    for _ in range(7):
        session.step_block()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        session.step_block()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    if out_path:
        prof.export_chrome_trace(out_path)
    return breakdown(prof, wall, passes=5 * model.cfg.num_layers)


def _category(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    # Triton kernels are fused elementwise work even when named after the GEMM they feed (`fused__scaled_mm_`)
    if not n.startswith("triton") and any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "_mm", "wgmma")):
        return "gemm"
    if any(s in n for s in ("index_copy", "index_put", "scatter", "indexing")):
        return "cache_write"
    return "norm_mod_other"


def breakdown(prof, wall_ms: float, passes: int, top: int = 15) -> dict:
    """Kernel time per category and layer pass, and the kernels that take the most time in the block."""
    totals: dict[str, float] = {}
    kernels = []
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        cat = _category(evt.key)
        ms = evt.self_device_time_total / 1e3
        totals[cat] = totals.get(cat, 0.0) + ms
        kernels.append({"kernel": evt.key[:100], "category": cat, "ms_per_block": ms, "calls": evt.count})
    kernel = sum(totals.values())
    totals["gaps"] = max(0.0, wall_ms - kernel)
    kernels.sort(key=lambda k: -k["ms_per_block"])
    return {"block_wall_ms": wall_ms, "per_layer_pass_ms": {k: v / passes for k, v in totals.items()},
            "top_kernels": kernels[:top]}


def main_rows(args, cfg, rows, record, result) -> dict:
    """Eager reference, eager with the fast attention, fast path; window 9 and batch rows.
    Returns the latents of the eager and the fast bf16 rows."""
    model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
    model.set_attention("sdpa")
    eager = run_stream(model, None)
    record(summarize("eager bf16 w12 s3 (sdpa)", eager, None, 1))
    attention = model.set_attention(args.attention)
    # before the eager profile: right after it, this row ran up to 40% slow (runs 19, 30)
    same_kernels = run_stream(model, None)
    record(summarize(f"eager bf16 w12 s3 ({attention})", same_kernels, eager["latents"], 1))
    if args.profile:
        model.set_attention("sdpa")
        result["profile"]["eager"] = profile_block(model, None, args.trace_dir and f"{args.trace_dir}/eager.json")
    fast_model = make_fast(model, attention=args.attention, compile_options=args.inductor)
    result["attention"] = fast_model.attention_backend
    fast = run_stream(fast_model, GraphRunner)
    row = summarize(f"fast bf16 w12 s3 ({attention})", fast, eager["latents"], 1)
    row["max_rel_diff_vs_eager_same_attention"] = max_block_diff(fast["latents"], same_kernels["latents"])
    record(row)
    fast_ms = row["ms_per_block"]
    if args.profile:
        result["profile"]["fast"] = profile_block(fast_model, GraphRunner, args.trace_dir and f"{args.trace_dir}/fast.json")
    if "unfused" in rows:  # the eager blocks compiled (inductor fuses the norms) instead of the fused blocks
        unfused = make_fast(model, attention=args.attention, compile_options=args.inductor, fused=False)
        record(summarize(f"fast bf16 w12 s3 ({attention}, eager blocks compiled)", run_stream(unfused, GraphRunner),
                         eager["latents"], 1))
        del unfused
    if "fp8-attention" in rows:  # bf16 linears, FP8 self-attention
        fast_model.set_attention(FP8, fast=True)
        run = run_stream(fast_model, GraphRunner)
        row = summarize("fast bf16 w12 s3 (flash-attn 3 fp8 self-attention)", run, eager["latents"], 1)
        row["max_rel_diff_vs_fast_bf16"] = max_block_diff(run["latents"], fast["latents"])
        record(row)
        if args.profile:
            result["profile"]["fast, fp8 attention"] = profile_block(fast_model, GraphRunner, None)
        fast_model.set_attention(args.attention, fast=True)
    if "cross-sdpa" in rows:  # the text cross-attention (512 keys) through cuDNN instead
        plain = make_fast(model, attention=args.attention, compile=False, cross="sdpa", fused=False)
        record(summarize(f"fast bf16 w12 s3 ({attention}, eager blocks, sdpa cross-attention)",
                         run_stream(plain, GraphRunner), eager["latents"], 1))
        del plain
    if "relative" in rows:  # the same schedule with relative positions, right after the absolute row
        relative = run_stream(fast_model, GraphRunner, position_mode="relative")
        again = summarize(f"fast bf16 w12 s3 ({attention}), again", run_stream(fast_model, GraphRunner),
                          eager["latents"], 1)
        row = summarize(f"fast bf16 w12 s3 ({attention}, relative positions)", relative, None, 1)
        absolute = (fast_ms + again["ms_per_block"]) / 2  # before and after it
        row["slower_than_absolute"] = row["ms_per_block"] / absolute - 1
        record(row)
        record(again)
    if "long" in rows:
        record(long_row(fast_model))
    if "window9" in rows:
        record(summarize("fast bf16 w9 s3", run_stream(fast_model, GraphRunner, window=9), None, 1))
    if "batch" in rows:
        for b in (2, 4):
            record(summarize(f"fast bf16 w12 s3 batch {b}", run_stream(fast_model, GraphRunner, batch=b), None, b))
    return {"eager": eager["latents"], "fast": fast["latents"]}


def quantized_row(args, cfg, name, reference, result, attention: str | None = None) -> dict:
    """Quantized linears under CUDA graphs. FP8 and int8 dynamic are plain torch and compile like bf16;
    torchao's int8 weight-only tensors run uncompiled (Precision.compilable)."""
    start = time.perf_counter()
    model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
    precision = resolve(name, model.device)
    precision.apply(model)
    torch.cuda.synchronize()
    quantize_s = time.perf_counter() - start
    fast_model = make_fast(model, attention=attention or args.attention, compile_options=args.inductor)
    del model
    run = run_stream(fast_model, GraphRunner)
    backend = fast_model.attention_backend
    label = ("compiled, " if precision.compilable else "") + f"graphs, {backend}"
    row = summarize(f"fast {name} w12 s3 ({label})", run, reference and reference["eager"], 1)
    row["load_and_quantize_s"] = quantize_s
    if args.profile:
        result["profile"][f"fast {name}, {backend}"] = profile_block(fast_model, GraphRunner, None)
    if reference is not None:
        row["max_rel_diff_vs_fast_bf16"] = max_block_diff(run["latents"], reference["fast"])
    return row


def v2_rows(args, rows, record) -> None:
    """LongLive 2.0 on random 5B weights: eager bf16 (sdpa), the fast path, with FP8 linears (v2-fp8), and with FP8
    linears and FA3's FP8 self-attention (v2-fp8-all); steady blocks from block 3 on (the window is full), the cut's
    block left out (a cut recaches nothing)."""
    cfg = dataclasses.replace(LONGLIVE_2_5B, num_layers=args.layers)

    def row(name: str, run: dict, reference: torch.Tensor | None) -> dict:
        return summarize(f"LongLive 2.0 {name} w32 s8 704x1280", run, reference, 1, (V2_CUT_BLOCK,), block=8,
                         first_steady=3, switch_offsets=(0,))

    model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
    model.set_attention("sdpa")
    eager = run_shots(model, None)
    record(row("eager bf16 (sdpa)", eager, None))
    if "v2" in rows:
        fast = make_fast(model, attention=args.attention, compile_options=args.inductor)
        record(row(f"fast bf16 ({fast.attention_backend})", run_shots(fast, GraphRunner), eager["latents"]))
        del fast
    for key, attention in (("v2-fp8", args.attention), ("v2-fp8-all", FP8)):
        if key not in rows:
            continue
        del model
        torch.cuda.empty_cache()
        model = random_model(cfg, device="cuda", dtype=torch.bfloat16)
        resolve("fp8", model.device).apply(model)
        fast = make_fast(model, attention=attention, compile_options=args.inductor)
        record(row(f"fast fp8 ({fast.attention_backend})", run_shots(fast, GraphRunner), eager["latents"]))
        del fast


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="main,window9,batch", help=f"comma list of {ROWS}")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--profile", action="store_true", help="kernel breakdown of one steady block")
    parser.add_argument("--trace-dir", default=None, help="where --profile writes chrome traces")
    parser.add_argument("--json", default="bench.json")
    parser.add_argument("--layers", type=int, default=30, help="fewer layers for a quick look")
    parser.add_argument("--reference", default=None, help="file of the bf16 latents: written by a run with "
                        "'main', read by runs of precision rows alone (each precision can run in its own process)")
    parser.add_argument("--inductor", type=json.loads, default=None,
                        help='inductor options for the fast rows\' stages, as JSON: \'{"triton.multi_kernel": 1}\'')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        log.error("the benchmark needs a CUDA GPU")
        return 2
    rows = args.rows.split(",")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": [], "profile": {}}

    def record(row: dict) -> None:  # keep partial results if a later row fails or runs out of time
        result["rows"].append(row)
        log.info("row: %s", json.dumps({k: v for k, v in row.items() if k != "block_ms_all"}))
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)

    cfg = WanConfig(num_layers=args.layers)
    if "main" in rows:
        reference = main_rows(args, cfg, rows, record, result)
        if args.reference:
            torch.save(reference, args.reference)
    else:
        reference = torch.load(args.reference) if args.reference else None
    for precision in ("fp8", "int8 weight-only", "int8 dynamic"):
        if precision.replace(" ", "-") in rows:
            torch.cuda.empty_cache()
            record(quantized_row(args, cfg, precision, reference, result))
    if "fp8-all" in rows:  # FP8 linears and FP8 self-attention
        torch.cuda.empty_cache()
        record(quantized_row(args, cfg, "fp8", reference, result, attention=FP8))
    if {"v2", "v2-fp8", "v2-fp8-all"} & set(rows):
        torch.cuda.empty_cache()
        v2_rows(args, rows, record)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    base = {}  # the first row of each block size (LongLive 1.x: 3 frames at 480x832; 2.0: 8 at 704x1280)
    for r in result["rows"]:
        base.setdefault(r["block"], r["ms_per_block"])
    sys.stdout.write(f"\n{result['device']}, torch {result['torch']}, {HEIGHT}x{WIDTH} unless a row says, 4 steps; "
                     f"speedup against the first row of the same block size\n")
    sys.stdout.write("| row | ms/block | ms/latent frame | switch extra ms | first block ms | peak GiB | "
                     "pixel fps | speedup | max rel diff of the latents |\n|---|---|---|---|---|---|---|---|---|\n")
    for r in result["rows"]:
        sw = "/".join(f"{s:.0f}" for s in r["switch_extra_ms"])
        keys = ("max_rel_diff_vs_eager", "max_rel_diff_vs_eager_same_attention", "max_rel_diff_vs_fast_bf16")
        diff = " / ".join(f"{k.removeprefix('max_rel_diff_vs_')} {r[k]:.1e}" for k in keys if k in r)
        sys.stdout.write(f"| {r['row']} | {r['ms_per_block']:.1f} | {r['ms_per_latent_frame']:.1f} | {sw} | "
                         f"{r['first_block_ms']:.0f} | {r['peak_gib']:.2f} | {r['pixel_fps']:.1f} | "
                         f"{base[r['block']] / r['ms_per_block'] * r['batch']:.2f}x | {diff} |\n")
    for r in result["rows"]:
        if "end_ms_per_block" in r:
            sys.stdout.write(f"{r['row']}: ms/block {r['start_ms_per_block']:.1f} (blocks 5-104) -> "
                             f"{r['end_ms_per_block']:.1f} (last 100); allocated GiB {r['start_allocated_gib']:.3f} -> "
                             f"{r['end_allocated_gib']:.3f}; latents finite: {r['latents_finite']}\n")
        if "slower_than_absolute" in r:
            sys.stdout.write(f"{r['row']}: {100 * r['slower_than_absolute']:+.2f}% per steady block against absolute\n")
    for name, prof in result["profile"].items():
        parts = ", ".join(f"{k} {v:.3f}" for k, v in prof["per_layer_pass_ms"].items())
        sys.stdout.write(f"profile {name}: block {prof['block_wall_ms']:.1f} ms; per layer per pass (ms): {parts}\n")
    for name, prof in result["profile"].items():
        if name != "eager":
            sys.stdout.write(f"{name}: top kernels of one block (ms, calls):\n")
            for k in prof["top_kernels"]:
                sys.stdout.write(f"  {k['ms_per_block']:7.2f} {k['calls']:5d}  {k['kernel']}\n")


if __name__ == "__main__":
    sys.exit(main())
