"""``python -m benchmarks [ROW ...] [--quick] [--out PATH]``: run rows, print a table, merge results."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .registry import ROWS
from .results import format_table, merge_results

DEFAULT_OUT = Path(__file__).with_name("results.json")
OWN = ("pruning", "benchmarks", "app", "app_support", "visual")  # a broken import of these is a failure, not a skip


def _third_party(module: str | None) -> bool:
    """True for a missing module outside this project (an optional row's dependency); an
    ImportError of a name inside the project (a renamed function) is a broken row."""
    return bool(module) and module.split(".")[0] not in OWN


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("rows", nargs="*", metavar="ROW", help=f"row ids (default: all of {', '.join(ROWS)})")
    ap.add_argument("--quick", action="store_true", help="tiny settings, for smoke tests")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file to merge into")
    args = ap.parse_args(argv)
    ids = [r.upper() for r in args.rows] or list(ROWS)
    unknown = [r for r in ids if r not in ROWS]
    if unknown:
        ap.error(f"unknown row(s) {unknown}; known: {list(ROWS)}")
    results, failed = {}, []
    for rid in ids:
        t0 = time.perf_counter()
        try:
            results[rid] = ROWS[rid].run(quick=args.quick)
        except ModuleNotFoundError as e:  # a third-party dependency is missing: skip the row
            if not _third_party(e.name):
                print(f"{rid}: failed: {type(e).__name__}: {e}", file=sys.stderr)
                failed.append(rid)
                continue
            print(f"{rid}: skipped ({e})", file=sys.stderr)
            continue
        except Exception as e:  # keep going: one broken row must not lose the others
            print(f"{rid}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(rid)
            continue
        results[rid]["detail"] = {**results[rid].get("detail", {}), "wall_s": round(time.perf_counter() - t0, 1)}
    merged = merge_results(args.out, results)
    print(format_table({rid: merged[rid] for rid in results}, ROWS))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
