"""The main job: the one-minute LongLive workflow through a real ComfyUI server.

    .venv/bin/python scripts/run_main.py [--models DIR] [--workflow NAME] [--output DIR] [--serve]

With the real weights in DIR (diffusion_models/longlive_base.pt, loras/lora.pt,
text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors, vae/wan_2.1_vae.safetensors) it runs the
shipped workflow as it is. Without them it makes a tiny random model and VAE, runs the same
workflow on them at a small size, and says so: the video is then noise. --serve queues nothing: it keeps the
server up (until Ctrl-C) and prints its URL and an examples/api_client.py command that works against it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

from host import REPO, ComfyHost, Events, error_of, make_tiny_models, output_files
from make_workflows import LORA, MODEL, MODEL2, UMT5, VAE

log = logging.getLogger("longlive.main")
SAMPLER = "LongLive_StreamingSampler"
REAL_FILES = (f"diffusion_models/{MODEL}", f"loras/{LORA}", f"text_encoders/{UMT5}", f"vae/{VAE}")


def tiny_graph(graph: dict, names: dict, width: int = 96, height: int = 64) -> dict:
    """The same workflow on the tiny random files: no text encoder (hashed prompts), small frames. A LongLive 2.0
    workflow (no LoRA) takes the tiny 2.0 model and the Wan 2.2 VAE (make_tiny_models(v2=True)), and ComfyUI's
    example image at that size."""
    graph = copy.deepcopy(graph)
    v2 = any(n["class_type"] == "LongLive_ModelLoader" and n["inputs"]["model_name"] == MODEL2 for n in graph.values())
    for node_id, node in list(graph.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            del graph[node_id]
        elif kind == "LongLive_ModelLoader":
            inputs.update(model_name=names["model_v2"] if v2 else names["model"], lora_name="none" if v2 else names["lora"])
        elif kind == "LongLive_PromptSchedule":
            inputs.pop("clip", None)
        elif kind == "LongLive_StreamingSampler":
            inputs.update(width=width, height=height, compile_vae=False)  # no compiling on a CPU
        elif kind == "VAELoader":
            inputs["vae_name"] = names["vae_v2" if v2 else "vae"]
        elif kind == "ImageScale":
            inputs.update(width=width, height=height)
    return graph


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = pathlib.Path(os.environ.get("LONGLIVE_MODELS", REPO / "models"))
    parser.add_argument("--models", type=pathlib.Path, default=models,
                        help="a ComfyUI models folder holding the real weights (diffusion_models/, loras/, "
                             "text_encoders/, vae/; default $LONGLIVE_MODELS or ./models); without them the tiny "
                             "built-in random model runs")
    parser.add_argument("--workflow", default="longlive_one_minute",
                        help="a shipped workflow of workflows/api, without .json (default %(default)s)")
    parser.add_argument("--output", type=pathlib.Path, default=REPO / "out",
                        help="ComfyUI's output folder for the saved video (default ./out)")
    parser.add_argument("--serve", action="store_true", help="keep the server up for examples/api_client.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.serve:
        args.workflow = "longlive_interactive"
    graph = json.loads((REPO / "workflows" / "api" / f"{args.workflow}.json").read_text())
    base = pathlib.Path(tempfile.mkdtemp(prefix="longlive_main_"))
    real = all((args.models / f).exists() for f in REAL_FILES)
    if real:
        (base / "models").symlink_to(args.models.resolve(), target_is_directory=True)
        log.info("using the real LongLive weights in %s", args.models)
    else:
        missing = [f for f in REAL_FILES if not (args.models / f).exists()]
        log.warning("No LongLive weights in %s (missing %s): using a TINY BUILT-IN RANDOM MODEL and VAE. "
                    "The video is noise; it shows that the pipeline runs.", args.models, ", ".join(missing))
        graph = tiny_graph(graph, make_tiny_models(base / "models"))
    with ComfyHost(base, extra_args=["--output-directory", str(args.output)]) as host:
        if args.serve:
            return serve(host, graph, base)
        log.info("ComfyUI at %s; queueing workflows/api/%s.json", host.url, args.workflow)
        events = Events(host.url, host.client_id)
        entry = follow(host, events, graph, host.queue(graph))
        events.stop.set()
    error = error_of(entry)
    if error:
        log.error("the workflow failed in node %s (%s): %s\nComfyUI's log: %s; the temporary folder %s is left for "
                  "inspection", error.get("node_id"), error.get("node_type"), str(error.get("exception_message", error)).strip(),
                  host.log_path, base)
        return 1
    for f in output_files(entry):
        log.info("video: %s", args.output / f["subfolder"] / f["filename"])
    shutil.rmtree(base, ignore_errors=True)
    return 0


def serve(host: ComfyHost, graph: dict, base: pathlib.Path) -> int:
    """Keeps the server up until Ctrl-C (or SIGTERM); the workflow the client should send is written beside it."""
    workflow = base / "longlive_interactive.json"
    workflow.write_text(json.dumps(graph, indent=1))
    print(f"ComfyUI with LongLive at {host.url}; try:\n  python examples/api_client.py --server {host.url} "
          f"--workflow {workflow} \"a corgi on a beach\" \"the corgi jumps into the waves\"\nCtrl-C stops it.",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while host.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def follow(host: ComfyHost, events: Events, graph: dict, prompt_id: str, timeout: float = 7200) -> dict:
    """Waits for the run, printing each node as it starts and each block as it is made: how many of the run's blocks
    are done (ComfyUI's progress events), their speed (the block events) and how many previews reached the page."""
    start, seen, deadline, block = time.time(), 0, time.time() + timeout, {}
    while time.time() < deadline:
        items = events.since(start)
        for _, kind, data in items[seen:]:
            if kind == "executing" and data.get("node") in graph:
                log.info("running %s", graph[data["node"]]["class_type"])
            elif kind == "longlive.block":
                block = data
            elif kind == "progress" and graph.get(data.get("node"), {}).get("class_type") == SAMPLER and block:
                previews = sum(k == "preview" for _, k, _ in items)
                log.info("  block %d of %d (latent frame %d): %.0f ms a block (%.1f pixel fps), %s", data["value"],
                         data["max"], block["frame"], block.get("last_block_ms", 0), block.get("fps", 0),
                         f"{previews} preview{'' if previews == 1 else 's'}")
        seen = len(items)
        entry = host.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"the workflow did not finish in {timeout:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
