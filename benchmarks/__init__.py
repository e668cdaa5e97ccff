"""Performance and quality benchmarks: ``python -m benchmarks [ROW ...]`` (rows in ``registry.py``).

Rows live in :mod:`benchmarks.registry`; each is a function returning
``{"value", "target", "ok", "unit", "detail"}``. Nothing is imported or built at import time.
"""
