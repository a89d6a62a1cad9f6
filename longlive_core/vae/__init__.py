"""Streaming decoders: ComfyUI's Wan 2.1 VAE chunk by chunk with its causal cache (stream.py; its RGB head as a
Triton kernel, head.py) and the tiny draft decoder (tiny.py). Plain torch: the modules come from the host."""
