"""Benchmarks (pytest-benchmark, GPU), compile-only instruments (conv_sass, conv_inspect) and host-side
instruments (host_step), and the one-command GPU report. A package: tests import `bench.x`; the
scripts also run as `python bench/x.py` (each puts the repo root on sys.path first)."""
