"""Triton kernels of the transformer's memory-bound work (ops.py: torch custom ops, defined through library.py;
jit.py: the Triton programs; launch.py: how they launch, also inside a CUDA graph capture)."""
