"""API tests of the Gradio app with gradio_client, the app launched in-process.

Every named endpoint runs on the bundled model (or, until it is trained, the tiny random SD
pipeline) with tiny settings, and the outputs are checked: table shapes, figure types, two
images, plan totals that match the selection, an export that ``load_pruned`` reloads.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile

import pytest

gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402
from pruning.loading import BUNDLED  # noqa: E402

SOURCE = "tiny-shapes-sd" if (BUNDLED["tiny-shapes-sd"] / "model_index.json").is_file() else "tiny-random-sd"
PROMPTS = "a red circle at the top left on a white background\na blue square at the bottom right on a black background"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    global DOWNLOADS
    DOWNLOADS = str(tmp_path_factory.mktemp("downloads"))  # the clients' output files
    app.demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, quiet=True)
    yield app.demo.local_url
    app.demo.close()


DOWNLOADS = None


def client(url):
    c = gradio_client.Client(url, verbose=False, download_files=DOWNLOADS)
    c.predict(SOURCE, "cpu", "float32", api_name="/load_model")
    return c


@pytest.fixture(scope="module")
def c(url):
    return client(url)


def values(x):
    """A figure array: plotly encodes numeric arrays as {"dtype", "bdata"} (base64)."""
    import base64

    import numpy as np

    if isinstance(x, dict) and "bdata" in x:
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])
    return list(x)


def frame(d):
    return [dict(zip(d["headers"], row)) for row in d["data"]]


def figure(plot):
    import plotly.io

    return plotly.io.from_json(plot["plot"])


def weights_digest() -> str:
    h = hashlib.sha256()
    for name, t in sorted(app.CACHE.get(SOURCE).denoiser.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def resnets(c, n):
    table = frame(c.predict("operators", api_name="/table_mode")[0])
    return table, [r["fqn"] for r in table if r["kind"] == "resnet"][:n]


def test_endpoints_are_named(c):
    names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/load_model", "/stop", "/sweep", "/ecodiff", "/ecodiff_plan", "/taylor", "/prefill",
                     "/table_mode", "/plan_totals", "/generate", "/compare_methods", "/export"}


def test_load_model(c):
    info, kinds, ops, table, mode = c.predict(SOURCE, "cpu", "float32", api_name="/load_model")
    assert "family `sd`" in info and "M params" in info and "GMACs" in info
    kinds = frame(kinds)
    assert {r["kind"] for r in kinds} >= {"resnet", "attn1", "attn2", "ff", "head", "neuron", "group"}
    assert mode == "operators" and len(frame(table)) == len(ops["choices"]) > 10
    assert list(table["headers"]) == ["prune", "fqn", "kind", "units", "kept", "params", "macs", "score"]


def test_bad_inputs_give_toasts(c):
    with pytest.raises(gradio_client.exceptions.AppError, match="not a bundled model"):
        c.predict("no-such-model", "cpu", "float32", api_name="/load_model")
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the local Hugging Face cache"):
        c.predict("stabilityai/stable-diffusion-xl-base-1.0", "cpu", "float32", api_name="/load_model")
    with pytest.raises(gradio_client.exceptions.AppError, match="prompt"):
        c.predict("", 2, 2, "fine", [], api_name="/sweep")
    with pytest.raises(gradio_client.exceptions.AppError, match="Sparsities"):
        c.predict(["magnitude"], "0.1, 2", PROMPTS, 2, "latent_mse", api_name="/compare_methods")


def test_sweep_prefill_generate_export(c, tmp_path):
    from pruning import load_pruned

    _, ops = resnets(c, 3)
    table, fig, note = c.predict(PROMPTS, 2, 2, "fine", ops, api_name="/sweep")
    assert len(frame(table)) == 3 and "3 of 3" in note
    heat = figure(fig).data[0]
    assert heat.type == "heatmap" and "params" in heat.hovertemplate
    table, mode, totals, = c.predict("ldpruner", 0.02, api_name="/prefill")[:3]
    assert mode == "operators" and 0 < sum(r["prune"] for r in frame(table)) <= 3
    assert frame(totals)[0]["fraction"] >= 0.02
    images, metrics = c.predict(PROMPTS.splitlines()[0], 0, 2, api_name="/generate")
    assert len(images) == 2 and all(str(p).endswith(".png") for p in images)
    m = {r["metric"]: r["value"] for r in frame(metrics)}
    assert m["params_pruned"] < m["params_original"] and m["latent_mse"] > 0 and "latency_pruned_ms" in m
    zip_file, plan_file, snippet = c.predict(True, 0, PROMPTS, 2, api_name="/export")
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(tmp_path / "pruned-model")
    pruned = load_pruned(tmp_path / "pruned-model")
    assert sum(p.numel() for p in pruned.denoiser.parameters()) == m["params_pruned"]
    assert "load_pruned" in snippet
    assert json.loads(open(plan_file["value"]).read())["removed_operators"]
    zip_file, _, snippet = c.predict(False, 2, PROMPTS, 2, api_name="/export")  # denoiser only, recovered
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(tmp_path / "recovered")
    small = load_pruned(tmp_path / "recovered")
    assert sum(p.numel() for p in small.parameters()) == m["params_pruned"] and "slim denoiser" in snippet


def test_manual_selection_totals_match(c):
    from pruning.app_support import selection_table

    table, two = resnets(c, 2)
    for row in table:
        row["prune"] = row["fqn"] in two
    headers = list(table[0])
    value = {"headers": headers, "data": [[r[h] for h in headers] for r in table]}
    totals = frame(c.predict("operators", value, api_name="/plan_totals"))
    expected = sum(r["params"] for r in table if r["prune"])
    assert totals[0]["removed"] == expected > 0
    assert len(selection_table(app.CACHE.get(SOURCE), "operators")) == len(table)


def test_structure_methods(c):
    loss, mask, note = c.predict(PROMPTS, 2, 1, 2, ["head", "neuron"], 0.1, 0.2, 0.1, "global", api_name="/ecodiff")
    assert [t.type for t in figure(loss).data][:2] == ["scatter", "scatter"]
    assert {t.type for t in figure(mask).data} == {"bar"} and "removes" in note
    mask2, note2 = c.predict(0.2, "local", api_name="/ecodiff_plan")
    assert "20%" in note2 and figure(mask2).data
    heat, note = c.predict(PROMPTS, 2, 500, 0.05, ["head", "neuron", "group"], api_name="/taylor")
    assert figure(heat).data[0].type == "heatmap" and "Timesteps used" in note
    for method in ("ecodiff", "taylor", "magnitude"):
        table, mode, totals, = c.predict(method, 0.1, api_name="/prefill")[:3]
        assert mode == "structures" and list(table["headers"])[:5] == ["prune", "fqn", "kind", "units", "kept"]
        assert abs(frame(totals)[0]["fraction"] - 0.1) <= 0.011
    fig, df = c.predict(["magnitude", "random", "taylor"], "0.1, 0.2", PROMPTS, 2, "latent_mse",
                        api_name="/compare_methods")
    rows = frame(df)
    assert [r["method"] for r in rows] == ["original"] + ["magnitude"] * 2 + ["random"] * 2 + ["taylor"] * 2
    assert len(figure(fig).data) == 3 and all(r["latent_mse"] > 0 for r in rows[1:])


def test_two_users_at_once(url):
    before = weights_digest()
    users = [client(url), client(url)]
    results = [None, None]
    selections = []
    for i, u in enumerate(users):
        table, ops = resnets(u, 2)
        for row in table:
            row["prune"] = row["fqn"] == ops[i]
        selections.append(ops[i])
        headers = list(table[0])
        u.predict("operators", {"headers": headers, "data": [[r[h] for h in headers] for r in table]},
                  api_name="/plan_totals")

    def run(i):
        images, metrics = users[i].predict(PROMPTS.splitlines()[0], 0, 2, api_name="/generate")
        results[i] = ({r["metric"]: r["value"] for r in frame(metrics)}, open(images[1], "rb").read())
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    (m0, img0), (m1, img1) = results
    params = {r["fqn"]: r["params"] for r in resnets(users[0], 99)[0]}
    assert m0["params_original"] - m0["params_pruned"] == params[selections[0]]
    assert m1["params_original"] - m1["params_pruned"] == params[selections[1]]
    assert img0 != img1
    assert weights_digest() == before


def _wait_progress(job, timeout=60):
    t0 = time.time()  # PROGRESS: the run's tqdm bar has started, so the stop event is armed
    while job.status().code.name != "PROGRESS" and time.time() - t0 < timeout:
        time.sleep(0.05)


def test_stop_keeps_partial_results(url):
    u = client(url)
    job = u.submit(PROMPTS, 4, 25, "all", [], api_name="/sweep")
    _wait_progress(job)
    time.sleep(0.5)
    u.predict(api_name="/stop")
    table, fig, note = job.result(timeout=120)
    assert "partial" in note and len(frame(table)) < 39
    assert "3 of 3" in u.predict(PROMPTS, 2, 2, "fine", resnets(u, 3)[1], api_name="/sweep")[2]
    job = u.submit(PROMPTS, 2, 50, 2, ["head"], 0.1, 0.2, 0.1, "global", api_name="/ecodiff")
    t0 = time.time()
    while len(job.outputs()) < 2 and time.time() - t0 < 60:  # a live plot update arrived
        time.sleep(0.05)
    u.predict(api_name="/stop")
    loss, mask, note = job.result(timeout=120)
    assert "stopped" in note and 0 < len(values(figure(loss).data[0].x)) < 50
    loss, mask, note = u.predict(PROMPTS, 2, 1, 2, ["head"], 0.1, 0.2, 0.1, "global", api_name="/ecodiff")
    assert "stopped" not in note and len(values(figure(loss).data[0].x)) == 1
