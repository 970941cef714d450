"""Benchmarks for lehnz-stitch: ``python -m bench`` (see bench/__main__.py)."""
