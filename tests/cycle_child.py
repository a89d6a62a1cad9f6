"""Run by tests/test_gpu.py in a process of its own under the allocator it chooses (PYTORCH_CUDA_ALLOC_CONF):

    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync python tests/cycle_child.py

Captures work that allocates a tensor only a reference cycle holds, collects every cycle before the graph's first
run (as Python's collector may, once the capture has put it back on), replays, and prints one JSON line. Under
cudaMallocAsync, freeing a capture's allocation before its graph has run aborts the process: the capture must have
collected that cycle itself.
"""

from __future__ import annotations

import gc
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from longlive_core.fast.graphs import capture  # noqa: E402


def main() -> None:
    x = torch.ones(4, device="cuda")

    def work():
        loop = [x * 2]
        loop.append(loop)  # kept only by the cycle once work returns
        return x * 3

    graph, out = capture(work, x.device, rehearse=True)
    gc.collect()
    x.fill_(2)
    graph.replay()
    torch.cuda.synchronize()
    print(json.dumps({"allocator": torch.cuda.memory.get_allocator_backend(), "out": out.tolist(),
                      "collector_on": gc.isenabled()}))


if __name__ == "__main__":
    main()
