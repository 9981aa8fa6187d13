"""Compiled kernels of mmopt (Cython, OpenMP when available).

Each kernel is called through a small Python wrapper in the family that uses it; nothing here
is public API.
"""
