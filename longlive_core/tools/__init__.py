"""Tools beside the engine: random-weight models in the real file formats (synthetic.py), the replay of recorded
reference runs (verify.py) and the GPU benchmark (bench.py)."""
