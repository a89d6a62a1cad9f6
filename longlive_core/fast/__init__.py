"""The real-time path: compile set-up (compile.py), the one CUDA-graph capture mechanism (graphs.py), the model's
set-up (setup.make_fast) and the per-session graphs of the transformer passes (runner.py)."""
