"""``python app.py`` in a subprocess for the app rows (P5, R0), and gradio_client helpers.

>>> t = {"headers": ["prune", "fqn", "kind"], "data": [[False, "a", "ff"], [False, "b", "attn1"]]}
>>> tick(t, ["b"])["data"]
[[False, 'a', 'ff'], [True, 'b', 'attn1']]
>>> rows(t)[1]["kind"]
'attn1'
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_served(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> float:
    """Seconds until ``url`` answers HTTP 200 (raises if the app exits or the time runs out)."""
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


def default_model() -> str:
    from pruning.loading import BUNDLED

    return "tiny-shapes-sd" if (BUNDLED["tiny-shapes-sd"] / "model_index.json").is_file() else "tiny-random-sd"


@contextmanager
def launched(model: str, **env_extra):
    """Start ``python app.py`` (default model ``model``, a free port); yields a dict with
    ``url``, ``proc``, ``t_start`` (perf_counter just before the start), ``serve_s`` (start ->
    the page answers 200) and ``downloads`` (a temporary folder for the clients' files).
    The app is terminated and the folder removed on exit."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PRUNING_DEFAULT_MODEL": model,
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    url = f"http://127.0.0.1:{port}/"
    downloads = tempfile.mkdtemp(prefix="bench-app-")
    log = open(Path(downloads) / "app.log", "w")
    t_start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            serve_s = wait_served(url, proc)
        except Exception as e:
            log.flush()
            tail = (Path(downloads) / "app.log").read_text()[-2000:]
            raise RuntimeError(f"{e}; app.py output ends with:\n{tail}") from e
        yield {"url": url, "proc": proc, "t_start": t_start, "serve_s": serve_s, "downloads": downloads}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(downloads, ignore_errors=True)


def client(url: str, downloads: str, model: str | None = None):
    """A gradio_client ``Client``; with ``model``, that model loaded into its session
    (:func:`load_model`)."""
    from gradio_client import Client

    c = Client(url, verbose=False, download_files=downloads)
    c.load_errors = []
    if model is not None:
        load_model(c, model)
    return c


def load_model(c, model: str, retries: int = 2) -> None:
    """``/load_model`` in ``c``'s session, retried up to ``retries`` times (a second after a
    failure); the errors are appended to ``c.load_errors`` for the row to report. (The app
    preloads the default model in a background thread at start; a ``/load_model`` racing with
    that preload has failed with "Cannot copy out of meta tensor": two concurrent loads of
    one model break each other.)
    """
    from gradio_client.exceptions import AppError

    errors = c.__dict__.setdefault("load_errors", [])
    for attempt in range(retries + 1):
        try:
            c.predict(model, "cpu", "float32", api_name="/load_model")
            return
        except AppError as e:
            errors.append(str(e))
            if attempt == retries:
                raise
            time.sleep(1.0)


def value(x):
    """A component's value from an output (gradio sends ``{"__type__": "update", "value": ...}``
    for outputs returned with ``gr.update``)."""
    return x["value"] if isinstance(x, dict) and x.get("__type__") == "update" else x


def rows(table: dict) -> list[dict]:
    table = value(table)
    return [dict(zip(table["headers"], r)) for r in table["data"]]


def tick(table: dict, fqns) -> dict:
    """The selection table with exactly the rows whose ``fqn`` is in ``fqns`` ticked."""
    table = value(table)
    headers = list(table["headers"])
    i, j = headers.index("prune"), headers.index("fqn")
    data = [[r[j] in fqns if k == i else v for k, v in enumerate(r)] for r in table["data"]]
    return {"headers": headers, "data": data}
