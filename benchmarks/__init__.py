"""Benchmarks for visprog: run ``python benchmarks/run_all.py`` (see README.md)."""
