"""The causal Wan2.1 network: its configuration, caches, attention backends, the eager reference (wan.py) and the
fast path's fused classes (fused.py)."""
