"""Checkpoint files: every format users have, mapped to canonical Wan keys in one module (checkpoint.py)."""
