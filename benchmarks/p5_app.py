"""P5: app start and first comparison.

Starts ``python app.py`` in a subprocess, times until the page is served (HTTP 200), then
with ``gradio_client`` loads the bundled model, ticks two operators and times the first
``/generate`` (original and pruned images side by side, with metrics). Targets: serves within
20 s, first comparison within 5 s on this CPU. Without the bundled model (not trained yet)
the tiny random SD pipeline stands in, and ``detail["model"]`` says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE_TARGET_S, COMPARE_TARGET_S = 20.0, 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_served(url: str, proc, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"app.py did not serve {url} within {timeout} s")


def _model() -> str:
    from pruning.loading import BUNDLED

    return "tiny-shapes-sd" if (BUNDLED["tiny-shapes-sd"] / "model_index.json").is_file() else "tiny-random-sd"


def run(quick: bool = False) -> dict:
    from gradio_client import Client

    model, port = _model(), _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PRUNING_DEFAULT_MODEL": model,
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}/"
    downloads = tempfile.mkdtemp(prefix="p5-")
    t_start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        serve_s = _wait_served(url, proc)
        c = Client(url, verbose=False, download_files=downloads)
        t0 = time.perf_counter()
        c.predict(model, "cpu", "float32", api_name="/load_model")
        load_s = time.perf_counter() - t0
        table = c.predict("operators", api_name="/table_mode")[0]
        rows = [dict(zip(table["headers"], r)) for r in table["data"]]
        two = [r["fqn"] for r in rows if r["kind"] in ("attn1", "ff")][:2]
        for r in rows:
            r["prune"] = r["fqn"] in two
        c.predict("operators", {"headers": table["headers"], "data": [list(r.values()) for r in rows]},
                  api_name="/plan_totals")
        t0 = time.perf_counter()
        images, _ = c.predict("a red circle at the top left on a white background", 0, 0, api_name="/generate")
        compare_s = time.perf_counter() - t0
        first_s = time.perf_counter() - t_start
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(downloads, ignore_errors=True)
    ok = serve_s <= SERVE_TARGET_S and compare_s <= COMPARE_TARGET_S and len(images) == 2
    return {"value": round(serve_s, 2), "target": SERVE_TARGET_S, "ok": bool(ok), "unit": "s",
            "detail": {"serve_s": round(serve_s, 2), "first_comparison_s": round(compare_s, 2),
                       "first_comparison_target_s": COMPARE_TARGET_S, "load_model_s": round(load_s, 2),
                       "start_to_first_images_s": round(first_s, 2), "model": model,
                       "removed": two, "app_torch_threads": os.environ.get("PRUNING_THREADS", "1")}}


if __name__ == "__main__":
    print(run())
