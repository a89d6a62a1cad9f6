"""Interactive continuation through ComfyUI's HTTP API: three queue runs, three prompts, one video.

    python examples/api_client.py --server http://127.0.0.1:8188 "a corgi on a beach" \
        "the corgi jumps into the waves" "the sun sets over the sea"

Each run queues workflows/api/longlive_interactive.json with the next prompt and the same session
id; the sampler continues the video (recaching at the prompt change) and the VAE decode node
continues its causal cache, so the pieces join into one video. Prints each run's output files.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import time
import urllib.request
import uuid

WORKFLOW = pathlib.Path(__file__).resolve().parents[1] / "workflows" / "api" / "longlive_interactive.json"


def call(server: str, method: str, path: str, body=None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"{}")


def queue_and_wait(server: str, graph: dict, timeout: float = 3600) -> dict:
    prompt_id = call(server, "POST", "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = call(server, "GET", f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish")


def continuation_graphs(base: dict, prompts: list[str], session_id: str) -> list[dict]:
    """One graph per prompt; the first run resets the session so the video starts fresh."""
    graphs = []
    for i, text in enumerate(prompts):
        graph = copy.deepcopy(base)
        for node in graph.values():
            if node["class_type"] == "LongLive_PromptSchedule":
                node["inputs"]["schedule"] = f"0: {text}"
            if node["class_type"] in ("LongLive_StreamingSampler", "LongLive_VAEDecode"):
                node["inputs"]["session_id"] = session_id
            if node["class_type"] == "LongLive_StreamingSampler":
                node["inputs"]["reset"] = i == 0
            if node["class_type"] == "SaveVideo":
                node["inputs"]["filename_prefix"] = f"longlive/{session_id}_part{i + 1}"
        graphs.append(graph)
    return graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--workflow", type=pathlib.Path, default=WORKFLOW)
    parser.add_argument("--session", default="api-demo")
    args = parser.parse_args()
    base = json.loads(args.workflow.read_text())
    for i, graph in enumerate(continuation_graphs(base, args.prompts, args.session), 1):
        entry = queue_and_wait(args.server, graph)
        status = entry["status"]["status_str"]
        files = [f["filename"] for out in entry["outputs"].values() for f in out.get("images", [])]
        print(f"run {i}: {status} {files}")
        if status != "success":
            raise SystemExit(json.dumps(entry["status"]["messages"][-1], indent=1))


if __name__ == "__main__":
    main()
