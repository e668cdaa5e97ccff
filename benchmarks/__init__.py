"""Performance benchmarks (DESIGN.md section 8): ``python -m benchmarks [ROW ...]``.

Rows live in :mod:`benchmarks.registry`; each is a function returning
``{"value", "target", "ok", "unit", "detail"}``. Nothing is imported or built at import time.
"""
