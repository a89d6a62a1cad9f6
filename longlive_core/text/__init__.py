"""Text encoders run on the weights the host loaded (umt5.py: Wan's umt5-xxl)."""
