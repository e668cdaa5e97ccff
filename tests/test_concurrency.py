"""A run belongs to its request: when the request ends (cancel, disconnect, Stop) the run ends,
and a run that is ending can never change another user's result.

The app is launched in-process; client A starts long model work and ends its request, client
B generates the same plan and seed as it did while the server was idle and must get the same
image. ``app.RUNS.log`` records when each run's work returned (its worker no longer touches
the shared model): that must be within 2 s of the cancel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402
from tests.test_app import PROMPT, PROMPTS, client, frame, score_args, table_value  # noqa: E402

pytestmark = pytest.mark.slow  # long runs cancelled on a live server

END_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def url(app_url, tmp_path_factory):
    import tests.test_app as ta

    ta.DOWNLOADS = str(tmp_path_factory.mktemp("downloads"))
    return app_url


@pytest.fixture(scope="module")
def b(url):
    """Client B with a fixed plan (two resnets removed) and its result on an idle server."""
    c = client(url)
    table = frame(c.predict("operators", api_name="/table_mode")[0])
    two = [r["fqn"] for r in table if r["kind"] == "resnet"][:2]
    for row in table:
        row["prune"] = row["fqn"] in two
    c.predict("operators", table_value(table), api_name="/plan_totals")
    c.idle = generate(c)
    return c


def generate(c) -> bytes:
    out = c.predict(PROMPT, 7, 4, "side by side", api_name="/generate")
    return open(out[1]["value"], "rb").read()


def wait_running(session: str, timeout: float = 60) -> None:
    t0 = time.time()
    while app.RUNS.running(session) == 0:
        assert time.time() - t0 < timeout, "the run never started"
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the work


def wait_progress(session: str, timeout: float = 120) -> None:
    """Until a run of ``session`` has reported at least one finished unit (an operator, a step)."""
    t0 = time.time()
    while app.RUNS.progress(session) < 1:
        assert time.time() - t0 < timeout, "the run reported no progress"
        time.sleep(0.05)


def ended(session: str, since: float, timeout: float = 30) -> dict:
    t0 = time.time()
    while True:
        done = [e for e in app.RUNS.log if e["session"] == session and e["ended_at"] >= since]
        if done:
            return done[-1]
        assert time.time() - t0 < timeout, f"the run of {session} did not end"
        time.sleep(0.05)


LONG = {
    "sweep": score_args("ldpruner", n_gen=16, steps=100, granularity="all"),
    "ecodiff": score_args("ecodiff", prompts="\n".join([PROMPT] * 16), steps=100, epochs=50, batch_size=16),
}


@pytest.mark.parametrize("work", sorted(LONG))
def test_cancelled_run_ends_and_leaves_others_alone(url, b, work):
    a = client(url)
    job = a.submit(*LONG[work], api_name="/score")
    wait_running(a.session_hash)
    cancelled_at = time.monotonic()
    job.cancel()
    assert generate(b) == b.idle  # B waited for the model, then got exactly its idle result
    run = ended(a.session_hash, cancelled_at)
    assert run["ended_at"] - cancelled_at <= END_WITHIN_S, run
    assert run["reason"] == "request ended"


def test_disconnected_client_ends_its_run(url, b):
    args = json.dumps(score_args("ldpruner", n_gen=16, steps=100, granularity="all"))
    script = textwrap.dedent(f"""
        import json, time, gradio_client  # the client only: no torch, no app in this process
        c = gradio_client.Client({url!r}, verbose=False)
        c.predict("tiny-shapes-sd", "cpu", "float32", api_name="/load_model")
        print(c.session_hash, flush=True)
        c.submit(*json.loads({args!r}), api_name="/score")
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        session = proc.stdout.readline().strip()
        wait_running(session)
    finally:
        gone_at = time.monotonic()
        proc.kill()  # the client vanishes: its connection closes without a cancel
        proc.wait()
    assert generate(b) == b.idle
    run = ended(session, gone_at)
    assert run["ended_at"] - gone_at <= END_WITHIN_S and run["reason"] in ("request ended", "the session closed"), run


def test_stop_ends_an_export_with_recovery(url, b):
    a = client(url)
    a.predict("magnitude", 0.2, "global", api_name="/prefill")
    job = a.submit(True, 5000, PROMPTS, 50, api_name="/export")
    wait_running(a.session_hash)
    stopped_at = time.monotonic()
    a.predict(api_name="/stop")
    with pytest.raises(Exception, match="stopped during recovery"):
        job.result(timeout=60)
    run = ended(a.session_hash, stopped_at)
    assert run["ended_at"] - stopped_at <= END_WITHIN_S and run["reason"] == "stopped"
    assert generate(b) == b.idle


def test_stop_keeps_partial_results(url):
    a = client(url)
    job = a.submit(*score_args("ldpruner", n_gen=4, steps=25, granularity="all"), api_name="/score")
    wait_progress(a.session_hash)  # some operators are finished: there is a partial result to keep
    a.predict(api_name="/stop")
    table, fig, _, status, _, _ = job.result(timeout=60)
    assert "Stopped" in status and 0 < len(frame(table)) < 39
    assert "STOPPED" in __import__("visual").apply_theme(__import__("plotly.io").io.from_json(fig["plot"])).layout.title.text
    _, _, _, status, _, _ = a.predict(*score_args("ldpruner", operators=["mid_block.resnets.0"]), api_name="/score")
    assert "Done" in status  # the next run is not stopped
