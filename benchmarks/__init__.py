"""tinyconv's benchmarks: kernel-vs-kernel suites, tables and plots.

Suites (see benchmarks/README.md): kernels, separable, factorized,
conv-algos, threads, torch, models. Run them with `tinyconv bench [SUITE ...]`
or `python -m benchmarks [SUITE ...]`; each is also `python -m benchmarks.<module>`.
Timing is never asserted in a test; tests/test_benchmarks.py runs every suite
in --smoke mode so the suites keep working.
"""
