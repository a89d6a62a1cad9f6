"""Encoding a text: Wan's umt5-xxl on the weights the host loaded (umt5.py)."""
