"""Precisions: a Precision value resolved once (dtype, linear class, what it can fuse) and the quantized linears."""
