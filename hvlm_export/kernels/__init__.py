"""Compiled kernels that need neither torch nor a GPU (numpy in, numpy out; optional deps)."""
