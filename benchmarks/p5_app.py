"""P5: app start and first comparison.

Starts ``python app.py`` in a subprocess, times until the page is served (HTTP 200), then
with ``gradio_client`` loads the bundled model (``/load_model``), takes the operator table
(``/table_mode``), ticks two operators (``/plan_totals``) and times the first ``/generate``
(original and pruned images, their difference and the metrics table). A failed first
``/load_model`` is retried (``detail["first_load_errors"]`` lists the errors; ``load_model_s``
includes the retries). Targets: serves within
20 s, first comparison within 5 s on this CPU. Without the bundled model (not trained yet)
the tiny random SD pipeline stands in, and ``detail["model"]`` says so.
"""

from __future__ import annotations

import os
import time

from . import appserver

SERVE_TARGET_S, COMPARE_TARGET_S = 20.0, 5.0
PROMPT = "a red circle at the top left on a white background"


def run(quick: bool = False) -> dict:
    model = appserver.default_model()
    with appserver.launched(model) as app:
        serve_s = app["serve_s"]
        c = appserver.client(app["url"], app["downloads"])
        t0 = time.perf_counter()
        appserver.load_model(c, model)
        load_s = time.perf_counter() - t0
        table = c.predict("operators", api_name="/table_mode")[0]
        two = [r["fqn"] for r in appserver.rows(table) if r["kind"] in ("attn1", "ff")][:2]
        new_table, totals, _ = c.predict("operators", appserver.tick(table, two), api_name="/plan_totals")
        removed = appserver.rows(totals)[0]["fraction"]
        t0 = time.perf_counter()
        original, pruned, diff, slider, metrics, caption = c.predict(PROMPT, 0, 0, "side by side",
                                                                     api_name="/generate")
        compare_s = time.perf_counter() - t0
        first_s = time.perf_counter() - app["t_start"]
    images = [appserver.value(x) for x in (original, pruned, diff)]
    paths = [im if isinstance(im, str) else (im or {}).get("path") or "" for im in images]
    figures = {r["figure"] for r in appserver.rows(metrics)}
    got_images = all(str(p).endswith(".png") for p in paths)
    ok = serve_s <= SERVE_TARGET_S and compare_s <= COMPARE_TARGET_S and got_images and len(figures) > 0
    return {"value": round(serve_s, 2), "target": SERVE_TARGET_S, "ok": bool(ok), "unit": "s",
            "detail": {"serve_s": round(serve_s, 2), "first_comparison_s": round(compare_s, 2),
                       "first_comparison_target_s": COMPARE_TARGET_S, "load_model_s": round(load_s, 2),
                       "start_to_first_images_s": round(first_s, 2), "model": model,
                       "removed": two, "params_removed": removed, "images": got_images,
                       "metrics": sorted(figures), "caption": caption,
                       "first_load_errors": c.load_errors,
                       "app_torch_threads": os.environ.get("PRUNING_THREADS", "1")}}


if __name__ == "__main__":
    print(run())
