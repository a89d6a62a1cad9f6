"""Interactive continuation through ComfyUI's HTTP API: one queue run per prompt, one continuing video.

  python examples/api_client.py --server http://127.0.0.1:8188 "a corgi on a beach" "it jumps into the waves"

Each run queues workflows/api/longlive_interactive.json (or --workflow) with the next prompt and the same
session id (--session); the sampler continues the video (recaching at the prompt change) and the VAE decode
node continues its causal cache, so the runs' videos are consecutive parts of one video (part1, part2, ...:
played in order they join without a seam). Each part is downloaded from the server and its full path printed.
No server at hand: `python scripts/run_main.py --serve` starts one and prints the command to run here.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

WORKFLOW = pathlib.Path(__file__).resolve().parents[1] / "workflows" / "api" / "longlive_interactive.json"


def call(server: str, method: str, path: str, body=None) -> dict:
    """One HTTP call; a refused connection or an error answer ends the client with one clear message."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{method} {path}: the server answered {err.code}:\n{explain(err.read())}") from None
    except urllib.error.URLError as err:
        raise SystemExit(f"no ComfyUI at {server} ({err.reason}); start one (python scripts/run_main.py --serve "
                         f"starts one with the tiny model) or pass --server URL") from None


def explain(body: bytes) -> str:
    """ComfyUI's validation answer as lines: the error, then each node's errors."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:2000]
    lines = [str(answer.get("error", {}).get("message", answer.get("error", "")))]
    for node, info in answer.get("node_errors", {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {node} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def download(server: str, f: dict, folder: pathlib.Path) -> pathlib.Path:
    """Fetches an output file of the server (GET /view) into folder; returns its full path."""
    query = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f.get("subfolder", ""),
                                    "type": f.get("type", "output")})
    path = (folder / f["filename"]).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(f"{server}/view?{query}", timeout=600) as resp:
            path.write_bytes(resp.read())
    except urllib.error.HTTPError as err:
        raise SystemExit(f"GET /view of {f.get('subfolder', '')}/{f['filename']}: the server answered "
                         f"{err.code}") from None
    except urllib.error.URLError as err:
        raise SystemExit(f"GET /view of {f['filename']}: no answer from {server} ({err.reason})") from None
    return path


def queue_and_wait(server: str, graph: dict, timeout: float = 3600) -> dict:
    prompt_id = call(server, "POST", "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = call(server, "GET", f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish")


def failure(entry: dict, graph: dict) -> str:
    """What a failed run's history entry says: the node that failed and its error, or that it was interrupted."""
    messages = dict(entry.get("status", {}).get("messages", []))
    if "execution_error" in messages:
        e = messages["execution_error"]
        kind = e.get("node_type") or graph.get(str(e.get("node_id")), {}).get("class_type")
        return f"failed in node {e.get('node_id')} ({kind}): {e.get('exception_type')}: {e.get('exception_message')}"
    if "execution_interrupted" in messages:
        return f"was interrupted in node {messages['execution_interrupted'].get('node_id')}"
    return f"failed: {json.dumps(entry.get('status'))[:2000]}"


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
            if node["class_type"] in ("SaveVideo", "LongLive_SaveVideo"):
                node["inputs"]["filename_prefix"] = f"longlive/{session_id}_part{i + 1}"
        graphs.append(graph)
    return graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="+", help="one prompt per run, in order")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address (default %(default)s)")
    parser.add_argument("--workflow", type=pathlib.Path, default=WORKFLOW,
                        help="an API-format workflow with the LongLive nodes (default: the shipped interactive one)")
    parser.add_argument("--session", default="api-demo",
                        help="the session id the runs share; the first run resets it (default %(default)s)")
    parser.add_argument("--download", type=pathlib.Path, default=pathlib.Path("out") / "api_client",
                        help="the folder the parts are saved in (default %(default)s)")
    args = parser.parse_args()
    base = json.loads(args.workflow.read_text())
    for i, graph in enumerate(continuation_graphs(base, args.prompts, args.session), 1):
        entry = queue_and_wait(args.server, graph)
        if entry["status"]["status_str"] != "success":
            raise SystemExit(f"run {i} {failure(entry, graph).rstrip()}")
        for out in entry["outputs"].values():
            for f in out.get("images", []):
                print(f"part {i}: {download(args.server, f, args.download)}")


if __name__ == "__main__":
    main()
