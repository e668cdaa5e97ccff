"""results.json: validation, merging (other rows' entries are kept) and the printed table."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

KEYS = ("value", "target", "ok", "unit", "detail")


def check_entry(rid: str, entry: dict) -> dict:
    """Raise ``ValueError`` unless ``entry`` has the row schema (value, target, ok, unit, detail, measured_at)."""
    missing = [k for k in KEYS if k not in entry]
    if missing:
        raise ValueError(f"row {rid}: result is missing {missing}")
    if not isinstance(entry["ok"], bool) or not isinstance(entry["detail"], dict):
        raise ValueError(f"row {rid}: 'ok' must be a bool and 'detail' a dict")
    return entry


def merge_results(path: Path, new: dict[str, dict]) -> dict:
    """Stamp ``new`` rows with ``measured_at``, merge them into ``path`` atomically, return all rows."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.exists() else {}
    today = datetime.now(timezone.utc).date().isoformat()
    for rid, entry in new.items():
        old[rid] = {**check_entry(rid, entry), "measured_at": today}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(old.items())), indent=2, default=_plain) + "\n")
    os.replace(tmp, path)
    return old


def _plain(x):
    return x.item() if hasattr(x, "item") else str(x)


def format_table(rows: dict[str, dict], registry: dict) -> str:
    lines = [f"{'id':<4} {'what':<24} {'value':>9} {'target':>8} {'ok':<4} unit"]
    for rid, e in rows.items():
        title = registry[rid].title if rid in registry else ""
        lines.append(f"{rid:<4} {title:<24} {_fmt(e['value']):>9} {_fmt(e['target']):>8} "
                     f"{'yes' if e['ok'] else 'NO':<4} {e['unit']}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
