"""Writes the shipped workflows: workflows/NAME.json (UI format) and workflows/api/NAME.json (API format).

    .venv/bin/python scripts/make_workflows.py

The graphs are defined once here, in API format; the UI format is derived from a running
ComfyUI's /object_info so that widget order matches the real nodes.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

from host import REPO, ComfyHost
from workflow_format import api_to_ui

MODEL, LORA, VAE = "longlive_base.pt", "lora.pt", "wan_2.1_vae.safetensors"
MODEL2, VAE2 = "model_bf16.pt", "wan2.2_vae.safetensors"  # LongLive-2.0-5B (merged bf16), the Wan 2.2 VAE
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"

# six prompts, switching where upstream's interactive example switches (frames 42, 81, 120, 162, 201)
ONE_MINUTE_SCHEDULE = """0: a wide shot of a girl in a red coat walking through a snowy pine forest at dawn
frame 42: she stops and looks up as snow starts to fall heavily around her
frame 81: she runs through the forest, the camera tracking her from the side
frame 120: she reaches a frozen lake and slides across the ice, laughing
frame 162: the clouds part and golden sunlight spreads over the lake
frame 201: the camera slowly pulls back to show the whole valley in the evening light"""


def base_graph(schedule: str, length: float, unit: str, session_id: str, prefix: str, live: bool = False) -> dict:
    """Loader, schedule (umt5), sampler decoding each block as it is made (the compiled VAE decoder), and LongLive
    Save Video, which the sampler writes frame by frame while it generates. A live graph runs in relative positions
    (no end)."""
    return {
        "1": {"class_type": "LongLive_ModelLoader", "inputs": {
            "model_name": MODEL, "lora_name": LORA, "lora_strength": 1.0, "precision": "bf16",
            "attention": "auto", "fast": True}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": UMT5, "type": "wan", "device": "default"}},
        "3": {"class_type": "LongLive_PromptSchedule", "inputs": {"schedule": schedule, "clip": ["2", 0]}},
        "4": {"class_type": "LongLive_StreamingSampler", "inputs": {
            "model": ["1", 0], "schedule": ["3", 0], "width": 832, "height": 480, "length": length,
            "length_unit": unit, "seed": 0, "local_attn_size": 12, "sink_size": 3, "switch_policy": "recache",
            "session_id": session_id, "reset": False, "batch_size": 1, "live": live, "vae": ["5", 0],
            "compile_vae": True, "position_mode": "relative" if live else "absolute"}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "6": {"class_type": "LongLive_SaveVideo", "inputs": {"video": ["4", 2], "filename_prefix": prefix,
                                                               "mode": "one file per run"}},
    }


MULTISHOT_SCHEDULE = """0: a lighthouse keeper climbs the spiral stairs of an old lighthouse at dusk, lantern in hand
5s: he reaches the top and lights the great lamp, its beam sweeping over the dark sea
10s cut: a small fishing boat in a storm, waves crashing over its bow, its crew looking up
15s cut: the boat sails into a calm harbour at dawn, the lighthouse small on the horizon"""


def longlive_2_graph(schedule: str, seconds: float, prefix: str, image: bool) -> dict:
    """LongLive 2.0 (upstream's settings: 1280x704 at 24 fps, window 32, sink 8, `keep` inside a shot): the schedule's
    `cut` lines start shots; with `image`, ComfyUI's example image scaled to the video's size is its first frame."""
    graph = base_graph(schedule, seconds, "seconds", "", prefix)
    graph["1"]["inputs"].update(model_name=MODEL2, lora_name="none")
    graph["4"]["inputs"].update(width=1280, height=704, local_attn_size=32, sink_size=8, switch_policy="keep",
                                compile_vae=False)
    graph["5"]["inputs"]["vae_name"] = VAE2
    if image:
        graph["7"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
        graph["8"] = {"class_type": "ImageScale", "inputs": {"image": ["7", 0], "upscale_method": "lanczos",
                                                            "width": 1280, "height": 704, "crop": "center"}}
        graph["4"]["inputs"]["image"] = ["8", 0]
    return graph


WORKFLOWS = {
    "longlive_one_minute": base_graph(ONE_MINUTE_SCHEDULE, 240, "latent frames", "", "longlive/one_minute"),
    "longlive_interactive": base_graph("0: a corgi runs along a sunny beach, waves rolling in", 5.0, "seconds",
                                       "interactive", "longlive/interactive"),
    # generates until stopped from the LongLive panel (or an hour); type prompts in the panel
    "longlive_live": base_graph("0: a paper boat drifts down a rain-soaked city street", 3600.0, "seconds", "live",
                                "longlive/live", live=True),
    "longlive2_multishot": longlive_2_graph(MULTISHOT_SCHEDULE, 20.0, "longlive/multishot", image=False),
    "longlive2_image_to_video": longlive_2_graph("0: the scene comes alive, the camera slowly pushes in", 10.0,
                                                 "longlive/image_to_video", image=True),
}


def main() -> None:
    out = REPO / "workflows"
    (out / "api").mkdir(parents=True, exist_ok=True)
    with ComfyHost(pathlib.Path(tempfile.mkdtemp())) as host:
        info = host.get("/object_info")
    for name, graph in WORKFLOWS.items():
        (out / "api" / f"{name}.json").write_text(json.dumps(graph, indent=1) + "\n")
        (out / f"{name}.json").write_text(json.dumps(api_to_ui(graph, info), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")


if __name__ == "__main__":
    main()
