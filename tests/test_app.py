"""API tests of the Gradio app with gradio_client, the app launched in-process.

Every named endpoint runs on the bundled model with tiny settings, and the outputs are
checked: table shapes, figure types, images, plan totals that match the selection, an export
that ``load_pruned`` reloads, and the registry's methods in the method choices.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import zipfile

import pytest

gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402
from app_support import format as fmt  # noqa: E402
from app_support import method_controls as mc  # noqa: E402
from app_support import wiring  # noqa: E402
from app_support.tabs import score as score_tab  # noqa: E402
from pruning import labels, methods  # noqa: E402
from visual.theme import plain  # noqa: E402

SOURCE = "tiny-shapes-sd"
PROMPT = "a red circle at the top left on a white background"
PROMPTS = PROMPT + "\na blue square at the bottom right on a black background"
KINDS = ["head", "neuron", "group"]
MAG = "Weight magnitude"  # pruning.labels.method_name: the same name on every tab


TINY = {  # tiny settings per method (test values), by setting name
    "ldpruner": {"n_gen": 2, "granularity": "fine"},
    "ecodiff": {"epochs": 1, "batch_size": 2, "kinds": ["head", "neuron"], "beta": 0.1, "lr": 0.5},
    "diffpruning": {"stride": 500, "thr": 0.05, "kinds": KINDS},
}


def score_args(method, *, prompts=PROMPTS, steps=2, preset=None, **values):
    """The score endpoint's arguments: the method and its settings as named data."""
    data = {"prompts": prompts.splitlines(), "steps": steps, **TINY.get(method, {}), **values}
    if preset is not None:
        data["preset"] = preset
    return method, data


@pytest.fixture(scope="module")
def url(app_url, tmp_path_factory):
    """The session's app server (tests/conftest.py); this module's clients save files here."""
    global DOWNLOADS
    DOWNLOADS = str(tmp_path_factory.mktemp("downloads"))  # the clients' output files
    return app_url


DOWNLOADS = None


def client(url, source=SOURCE):
    c = gradio_client.Client(url, verbose=False, download_files=DOWNLOADS)
    c.predict(source, "cpu", "float32", api_name="/load_model")
    return c


@pytest.fixture(scope="module")
def c(url):
    return client(url)


def frame(d):
    if d.get("__type__") == "update":  # a table returned with a new label
        d = d["value"]
    return [dict(zip(d["headers"], row)) for row in d["data"]]


def figure(plot):
    import plotly.io

    if plot.get("__type__") == "update":  # a plot returned with its visibility
        plot = plot["value"]
    return plotly.io.from_json(plot["plot"])


def weights_digest() -> str:
    h = hashlib.sha256()
    for name, t in sorted(app.CACHE.get(SOURCE).denoiser.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def table_value(rows):
    headers = list(rows[0])
    return {"headers": headers, "data": [[r[h] for h in headers] for r in rows]}


def resnets(c, n):
    table = frame(c.predict("operators", api_name="/table_mode")[0])
    return table, [r["fqn"] for r in table if r["kind"] == "resnet"][:n]


def test_endpoints_are_named(c):
    names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/load_model", "/stop", "/score", "/prefill", "/table_mode", "/plan_totals", "/generate",
                     "/compare_methods", "/redraw", "/export", "/estimate", "/estimate_compare", "/estimate_export",
                     "/evaluate_plan"}


def test_load_model(c):
    out = c.predict(SOURCE, "cpu", "float32", api_name="/load_model")
    info, kinds = out[0], frame(out[1])
    assert "family `sd`" in info and "params" in info and "MACs" in info and SOURCE in info
    cond = next(r for r in kinds if r["kind"] == "channel")  # the conditioning channels, in the table and the line
    assert f"conditioning channels {cond['share of params']}" in info
    assert {r["kind"] for r in kinds} >= {"resnet", "attn1", "attn2", "ff", "head", "neuron", "group"}
    table = frame(out[11])
    assert out[12] == "operators" and len(table) > 10
    assert list(out[11]["headers"]) == ["prune", "score", "fqn", "kind", "kept units", "params", "MACs",
                                       "kept indices"]


def test_bad_inputs_give_toasts(c):
    with pytest.raises(gradio_client.exceptions.AppError, match="not a bundled model"):
        c.predict("no-such-model", "cpu", "float32", api_name="/load_model")
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the local Hugging Face cache"):
        c.predict("stabilityai/stable-diffusion-xl-base-1.0", "cpu", "float32", api_name="/load_model")
    with pytest.raises(gradio_client.exceptions.AppError, match="prompt"):
        c.predict(*score_args("ldpruner", prompts=""), api_name="/score")
    with pytest.raises(gradio_client.exceptions.AppError, match="images per operator must be an integer"):
        c.predict(*score_args("ldpruner", n_gen="many"), api_name="/score")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"target sparsities are fractions between 0 and 1, like 0.2 .*sparsities\[1\] is 2"):
        c.predict(["magnitude"], "0.1, 2", PROMPTS, 2, "latent_mse", api_name="/compare_methods")
    c.predict(SOURCE, "cpu", "float32", api_name="/load_model")
    with pytest.raises(gradio_client.exceptions.AppError,  # issue 23 item 9: never gradio's "greater than maximum"
                       match=r"target sparsity must be a fraction between 0 and 1, like 0.2, got 5 \(write 5% as 0.05\)"):
        c.predict("magnitude", 5, "global", api_name="/prefill")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"Target 90% is out of reach\. Weight magnitude .*can "
                                                                r"remove at most 65% of the params .*of each layer"):
        c.predict("magnitude", 0.9, "global", api_name="/prefill")  # what the budget allows, not every unit


def test_sweep_prefill_generate_export(c, tmp_path):
    from pruning import load_pruned

    _, ops = resnets(c, 3)
    table, fig, _, status, _, estimate = c.predict(*score_args("ldpruner", operators=ops), api_name="/score")
    assert estimate.startswith("**Estimate** (tiny-shapes-sd") and "peak memory" in estimate  # shown before the run
    assert len(frame(table)) == 3 and "3 of 3 operators" in status
    heat = figure(fig).data[0]
    assert heat.type == "heatmap" and "params" in heat.hovertemplate
    title = plain(figure(fig).layout.title.text)  # wrapped into lines for a phone: read as one line
    assert SOURCE in title and "2 samples" in title
    table, mode, totals = c.predict("ldpruner", 0.02, "global", api_name="/prefill")[:3]
    assert mode == "operators" and 0 < sum(r["prune"] for r in frame(table)) <= 3
    assert float(frame(totals)[0]["fraction"].rstrip("%")) >= 2
    *images, slider, metrics, caption = c.predict(PROMPT, 0, 2, "side by side", api_name="/generate")
    assert all(str(im["value"]).endswith(".png") for im in images) and not slider["visible"]
    m = {r["figure"]: r for r in frame(metrics)}
    assert m["denoiser params"]["change / meaning"].startswith("-") and "latency" in "".join(m)
    asked = c.predict(0, False, api_name="/estimate_export")
    zip_file, plan_file, snippet, _, estimate, quality, quality_line = c.predict(True, 0, PROMPTS, 2, api_name="/export")
    assert "Method**: LD-Pruner 2%" in quality_line and "Measured at export on 4 prompts" in quality_line
    card = (tmp_path / "card")  # the screen shows the rows the card records
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(card)
    from pruning.card import quality_rows
    from pruning.manifest import MANIFEST

    recorded = json.loads((card / "pruned-model" / MANIFEST).read_text())["card"]["quality"]
    assert [(r["figure"], r["pruned"]) for r in frame(quality)] == [(r["figure"], r["pruned"])
                                                                   for r in quality_rows(recorded)]
    assert "shapes task accuracy (higher is better)" in [r["figure"] for r in frame(quality)]
    assert "Export:" in estimate and "Export:" in asked
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(tmp_path)
    pruned = load_pruned(tmp_path / "pruned-model")  # the folder the snippet names, as unzipped
    plan = json.loads(open(plan_file["value"]).read())
    assert plan["removed_operators"] and pruned.family == "sd"
    assert 'load_pruned("pruned-model")' in snippet and "pip install" in snippet
    zip_file, _, snippet, *_ = c.predict(False, 2, PROMPTS, 2, api_name="/export")  # denoiser only, recovered
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(tmp_path / "recovered")
    small = load_pruned(tmp_path / "recovered" / "pruned-model")
    assert sum(p.numel() for p in small.denoiser.parameters()) < sum(p.numel() for p in app.CACHE.get(SOURCE).denoiser.parameters())
    assert "slim unet alone" in snippet


def test_reconstruct_switch_in_generate_compare_and_export(url, tmp_path, monkeypatch):
    from pruning import load_pruned

    monkeypatch.setattr(sys.modules["pruning.reconstruct"], "DEFAULT_PROMPTS", 8)  # the default settings on fewer prompts: the wiring
    from pruning.manifest import read_manifest

    c = client(url)
    c.predict("magnitude", 0.2, "global", api_name="/prefill")
    *images, _, _, caption = c.predict(PROMPT, 0, 2, "side by side", True, api_name="/generate")
    assert all(str(im["value"]).endswith(".png") for im in images)
    assert "reconstructed:" in caption and "layers re-fitted" in caption
    fig, table, status, _ = c.predict(["magnitude"], "0.2", PROMPTS, 2, "latent_mse", True,
                                   api_name="/compare_methods")
    rows = frame(table)
    assert [(r["method"], r["reconstructed"]) for r in rows if r["method"] != "fewer steps"] == [
        ("original", ""), ("your plan", ""), (MAG, ""), (MAG, "yes")] and "Done" in status
    assert [r["settings"] for r in rows if r["method"] == "your plan"] == ["Weight magnitude 20%"]
    assert len([r for r in rows if r["method"] == "fewer steps"]) == 1  # the baseline at the plan's MACs
    names = [t.name for t in figure(fig).data if "fewer" not in t.name]  # each curve names its settings
    assert names == ["Weight magnitude (defaults)", "Weight magnitude (defaults) + reconstruction",
                     "your plan: Weight magnitude 20%"], names
    zip_file, plan_file, _, status, *_ = c.predict(True, 0, PROMPTS, 2, True, api_name="/export")
    assert "reconstructed:" in status
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(tmp_path)
    plan, _ = read_manifest(tmp_path / "pruned-model")
    assert plan.reconstruction["settings"]["ridge"] > 0 and json.loads(open(plan_file["value"]).read())["reconstruction"]
    assert load_pruned(tmp_path / "pruned-model").family == "sd"
    with pytest.raises(gradio_client.exceptions.AppError, match="reconstruct must be true or false"):
        c.predict(PROMPT, 0, 2, "side by side", "yes", api_name="/generate")


def test_generate_and_export_share_one_refit_of_the_same_plan(monkeypatch):
    """The app re-fits a plan once: Generate and Export of the same plan get the same module; another
    plan (or model) is re-fitted afresh; a stopped re-fit caches nothing."""
    from types import SimpleNamespace

    from app_support import comparison
    from pruning.errors import RunStopped
    from pruning.plan import PruningPlan
    from pruning.reconstruct import ReconstructSettings

    calls = []

    def fake(handle, plan, settings=None, control=None):
        if control == "stop":
            raise RunStopped("stopped")
        calls.append(plan.removed_operators)
        return object()

    monkeypatch.setattr(comparison, "reconstruct", fake)
    monkeypatch.setattr(comparison, "_REBUILT", {})
    h = SimpleNamespace(model_ref="tiny:sd@1", device="cpu", dtype="float32")
    a, b = (PruningPlan(family="sd", base="tiny:sd@1", removed_operators=(op,)) for op in ("x", "y"))
    first = comparison.refit(h, a)
    assert comparison.refit(h, a) is first and calls == [("x",)]
    with pytest.raises(RunStopped):
        comparison.refit(h, b, control="stop")
    assert comparison.refit(h, a) is first  # the stopped one left the cache as it was
    assert comparison.refit(h, b) is not first and comparison.refit(SimpleNamespace(**{**vars(h), "dtype": "bf16"}), b)
    assert calls == [("x",), ("y",), ("y",)]
    # the How much? comparison reuses the re-fit held for its plan (default settings) and keeps none of its own
    held = comparison.refit(h, a)
    assert calls[-1] == ("x",) and comparison.comparison_refit(h, a, ReconstructSettings()) is held
    again = a.with_provenance(created_at="later")  # the same cut, made again by the comparison
    assert again.to_json() != a.to_json() and comparison.comparison_refit(h, again, ReconstructSettings()) is held
    n = len(calls)
    assert comparison.comparison_refit(h, a, ReconstructSettings(ridge=0.5)) is not held  # other settings: afresh
    assert comparison.comparison_refit(h, b, ReconstructSettings()) is not held  # another plan: afresh...
    assert len(calls) == n + 2 and comparison.refit(h, a) is held  # ...and the visitor's re-fit stays cached


def test_estimate_before_a_run(c):
    text = c.predict(*score_args("ldpruner", n_gen=2), api_name="/estimate")
    assert text.startswith("**Estimate**") and "Operator sweep (LD-Pruner): " in text and "peak memory" in text


def test_ecodiff_with_the_authors_settings(c):
    args = score_args("ecodiff", preset="authors")
    for k in ("beta", "lr"):  # the preset's own values
        args[1].pop(k)
    table, fig, loss, status, _, _ = c.predict(*args, api_name="/score")
    assert frame(table) and "Done" in status
    shown = mc.shown_values("ecodiff", "authors", "sd")
    assert (shown["beta"], shown["lr"]) == (0.5, 0.5)  # the controls a preset fills: beta, lr for a UNet
    with pytest.raises(gradio_client.exceptions.AppError, match="no preset 'theirs'"):
        c.predict(*score_args("ecodiff", preset="theirs"), api_name="/score")  # the error names the bad value
    with pytest.raises(gradio_client.exceptions.AppError, match="no setting 'betta'"):
        c.predict(*score_args("ecodiff", betta=1), api_name="/score")


def test_ldpruner_proxy_choice_shows_the_agreement_and_changes_the_settings(c):
    model = {"source": SOURCE, "device": "cpu", "dtype": "float32"}
    note = score_tab.preset_note(model, "ldpruner", "proxy")
    assert "Measured on tiny-shapes-sd" in note and "Spearman" in note
    assert not score_tab.preset_note(model, "ldpruner", "full")
    h, full = score_tab.method_settings(model, "ldpruner", score_args("ldpruner", steps=None)[1])
    _, fast = score_tab.method_settings(model, "ldpruner", score_args("ldpruner", steps=None, preset="proxy")[1])
    full, fast = full.resolved(h), fast.resolved(h)
    assert fast.proxy and (fast.steps, fast.resolution) == (full.steps // 2, full.resolution // 2)  # 10, 64 px
    _, three = score_tab.method_settings(model, "ldpruner", score_args("ldpruner", steps=3, preset="proxy")[1])
    assert three.resolved(h).steps == 3
    text = c.predict(*score_args("ldpruner", n_gen=2, preset="proxy"), api_name="/estimate")
    assert text.startswith("**Estimate**")


def test_ldpruner_fast_score_is_suggested_over_the_gpu_budget_with_its_agreement(monkeypatch):
    model = {"source": SOURCE, "device": "cpu", "dtype": "float32"}
    monkeypatch.setattr(wiring, "GPU_BUDGET_S", None)  # no budget (not on a Space): nothing is suggested
    assert score_tab._over_budget(model, "ldpruner") is None
    note = score_tab.preset_note(model, "ldpruner", "fast")
    assert note.startswith("Fast score (one-step ablation") and "measured on tiny-shapes-sd" in note
    assert "Spearman" in note and "Suggested" not in note
    monkeypatch.setattr(wiring, "GPU_BUDGET_S", 1e-6)  # any full sweep exceeds it
    assert score_tab._over_budget(model, "ldpruner") is not None
    note = score_tab.preset_note(model, "ldpruner", "fast")
    assert note.startswith("**Suggested for this model**") and "choose \"full\"" in note and "Spearman" in note
    h, fast = score_tab.method_settings(model, "ldpruner", score_args("ldpruner", steps=None, preset="fast")[1])
    fast = fast.resolved(h)
    assert fast.fast and fast.timesteps == methods.ldpruner.DEFAULT_TIMESTEPS


def test_ldpruner_fast_score_runs_from_the_app(c):
    _, ops = resnets(c, 3)
    table, fig, _, status, _, _ = c.predict(*score_args("ldpruner", operators=ops, preset="fast"), api_name="/score")
    assert len(frame(table)) == 3 and "3 of 3 operators" in status
    assert "LD-Pruner (fast preset" in plain(figure(fig).layout.title.text)


def test_manual_selection_totals_match(c):
    table, two = resnets(c, 2)
    for row in table:
        row["prune"] = row["fqn"] in two
    new_table, _, totals, *_ = c.predict("operators", table_value(table), api_name="/plan_totals")
    from pruning.catalog import catalog

    ops = catalog(app.CACHE.get(SOURCE).denoiser)[0].set_index("fqn")
    removed = int(ops.loc[two, "params"].sum())
    assert frame(totals)[0]["removed"] == fmt.count(removed)
    kept = {r["fqn"]: r["kept units"] for r in frame(new_table)}
    assert all(kept[f] == "0 of 1" for f in two)  # the kept column follows a manual tick


def test_structure_methods(c):
    loss = c.predict(*score_args("ecodiff"), api_name="/score")[2]
    assert [t.type for t in figure(loss).data][:2] == ["scatter", "scatter"]
    table, heat, _, status, _, _ = c.predict(*score_args("diffpruning"), api_name="/score")
    assert figure(heat).data[0].type == "heatmap" and "Done" in status
    for method in ("ecodiff", "diffpruning", "magnitude"):
        table, mode, totals = c.predict(method, 0.1, "global", api_name="/prefill")[:3]
        rows = frame(table)
        assert mode == "structures" and list(table["headers"])[:4] == ["prune", "score", "fqn", "kind"]
        assert abs(float(frame(totals)[0]["fraction"].rstrip("%")) - 10) <= 1.1
        scores = [r["score"] for r in rows]
        scored = [x for x in scores if x is not None]
        assert scored == sorted(scored) and scores[:len(scored)] == scored  # most prunable first, unscored last
    fig, df, status, estimate = c.predict(["magnitude", "random", "diffpruning"], "0.1, 0.2", PROMPTS, 2, "latent_mse",
                                api_name="/compare_methods")
    rows = frame(df)
    assert [r["method"] for r in rows if r["method"] != "fewer steps"] == (
        ["original", "your plan"] + [labels.method_name(n) for n in ("magnitude", "random", "diffpruning")
                                     for _ in range(2)])
    assert [r["method"] for r in rows].count("fewer steps") >= 1  # the baseline at the plans' MACs
    methods_drawn = [t for t in figure(fig).data if "fewer" not in (t.name or "") and t.mode == "lines+markers"]
    assert len(methods_drawn) == 3 and "Done" in status
    assert estimate.startswith("**Estimate**") and "Comparison:" in estimate
    asked = c.predict(["magnitude", "random", "diffpruning"], "0.1, 0.2", PROMPTS, 2, False, api_name="/estimate_compare")
    assert "Comparison:" in asked and "peak memory" in asked
    redrawn = figure(c.predict("psnr", api_name="/redraw"))  # from the stored table, no re-run
    assert "PSNR" in redrawn.layout.yaxis.title.text
    assert len([t for t in redrawn.data if "fewer" not in (t.name or "") and t.mode == "lines+markers"]) == 3


def test_obsdiff_scores_in_the_app(c):
    table, fig, _, status, _, _ = c.predict(*score_args("obsdiff", kinds=["neuron"]), api_name="/score")
    assert frame(table) and "Done" in status and "allocation was kept" in status  # which allocation the run kept
    out = c.predict("obsdiff", 0.2, "local", api_name="/prefill")
    note = out[-1]  # its plan says how the target was shared
    assert "share of the target was measured" in note or "Every layer loses the same fraction" in note, note
    assert "latent error" in note and "barely differ" not in note, note  # not cut from the scores: no near-tie warning
    kept = [o for o in out if isinstance(o, dict) and "plot" in o]  # the kept plot names its allocation, not "local"
    assert kept and "per layer)" in json.dumps(kept[0]) and "(local)" not in json.dumps(kept[0]), kept


def test_every_registered_method_is_offered(c):
    radio = [comp for comp in app.demo.config["components"] if comp.get("props", {}).get("label") == "method"][0]
    assert [v for _, v in radio["props"]["choices"]] == methods.names()


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
        u.predict("operators", table_value(table), api_name="/plan_totals")

    def run(i):
        out = users[i].predict(PROMPT, 0, 2, "side by side", api_name="/generate")
        results[i] = ({r["figure"]: r for r in frame(out[4])}, open(out[1]["value"], "rb").read())
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    (m0, img0), (m1, img1) = results
    assert m0["denoiser params"]["pruned"] != m1["denoiser params"]["pruned"]
    assert img0 != img1
    assert weights_digest() == before


def test_export_with_a_lora_upload(url, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from pruning import load_pipeline

    pipe = load_pipeline(SOURCE).pipe
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "conv1"], init_lora_weights=False))
    type(pipe).save_lora_weights(tmp_path / "in", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    c = client(url)
    c.predict("magnitude", 0.2, "global", api_name="/prefill")
    lora = gradio_client.handle_file(str(tmp_path / "in" / "pytorch_lora_weights.safetensors"))
    zip_file, _, snippet, status, *_ = c.predict(True, 0, PROMPTS, 2, False, lora, api_name="/export")
    assert "with the LoRA sliced" in status and 'subfolder="lora"' in snippet
    names = zipfile.ZipFile(zip_file["value"]).namelist()
    assert {"pruned-model/README.md", "pruned-model/grid.png", "pruned-model/lora/pytorch_lora_weights.safetensors"} \
        <= set(names)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(gradio_client.exceptions.AppError, match="bad.safetensors"):
        c.predict(True, 0, PROMPTS, 2, False, gradio_client.handle_file(str(tmp_path / "bad.safetensors")),
                  api_name="/export")


@pytest.mark.slow
def test_native_switch_in_select_and_export(url, tmp_path):
    from pruning.manifest import read_manifest

    c = client(url)
    c.predict("magnitude", 0.2, "global", api_name="/prefill")  # heads and neurons: never native
    with pytest.raises(gradio_client.exceptions.AppError, match="not native .*pruned"):
        c.predict(True, 0, PROMPTS, 2, False, None, True, api_name="/export")
    note = c.predict("magnitude", 0.1, "global", True, api_name="/prefill")[-1]
    assert "The plan is native: plain diffusers loads its export" in note
    zip_file, _, snippet, status, *_ = c.predict(True, 0, PROMPTS, 2, False, None, True, api_name="/export")
    assert 'DiffusionPipeline.from_pretrained("pruned-model")' in snippet
    with zipfile.ZipFile(zip_file["value"]) as z:
        z.extractall(tmp_path)
    assert read_manifest(tmp_path / "pruned-model")[1]["native"]["params"] > 0


def test_a_model_switch_says_what_it_waits_for():
    """Issue 23 item 5: Load pressed during a run says which run it waits for, and the new model's
    status says that run's result was cleared."""
    from types import SimpleNamespace

    req = SimpleNamespace(session_hash="s-wait")
    assert wiring.waiting_note(req) == app.gr.skip()  # nothing running: the status is left alone
    wiring.ACTIVE["s-wait"] = "the EcoDiff run on tiny-shapes-sd, float32"
    try:
        note = wiring.waiting_note(req)
        assert note.startswith("Waiting for the EcoDiff run on tiny-shapes-sd, float32 to finish") and "Stop" in note
        assert wiring.WAITED["s-wait"] == "the EcoDiff run on tiny-shapes-sd, float32"
    finally:
        wiring.ACTIVE.pop("s-wait", None)
        wiring.WAITED.pop("s-wait", None)


def test_the_guide_names_every_unit_kind():
    """The opening guide's words name every kind of unit the tables and plots show (the conditioning
    channels, kind "channel", appeared in the Model, Score and Select tabs with no word about them)."""
    from app_support import guide
    from pruning.card import KIND_WORDS
    from pruning.catalog import UNIT_KINDS

    words = guide.GLOSSARY.replace("**", "").replace("\n", " ")
    for kind in UNIT_KINDS:
        assert KIND_WORDS[kind].split()[-1] in words, kind
    assert "conditioning channels" in words and "`channel`" in words
    assert "conditioning channels" in guide.intro().replace("\n", " ")


def test_export_summary_counts_conditioning_channels_apart():
    """The Export tab's summary: the conditioning channels are channels removed, not "a layer slimmed"
    (an OBS-Diff plan on tiny-shapes-sd3 read "0 operators removed and 3 layers slimmed" for two FFNs
    and the time / text embedding, whose channels every block reads)."""
    from app_support.tables import totals
    from app_support.tabs.export import removed_parts
    from pruning.plan import PruningPlan

    h = app.CACHE.get("tiny-shapes-sd3")
    p = PruningPlan(family="sd3", base=h.model_ref, kept_neurons={"transformer_blocks.0.ff": tuple(range(100))},
                    kept_channels={"time_text_embed": tuple(range(58))})
    assert removed_parts(h, p, totals(h, p)) == ("0 operators removed, 1 layer slimmed and 70 of 128 conditioning "
                                                 "channels removed")
    q = PruningPlan(family="sd3", base=h.model_ref, kept_neurons={"transformer_blocks.0.ff": (0, 1)})
    assert removed_parts(h, q, totals(h, q)) == "0 operators removed and 1 layer slimmed"


def test_every_error_toast_is_made_in_one_place():
    """How long an error toast stays is set in one place (wiring.toast): no other module of the app builds
    a gr.Error, and the time grows with the text, within wiring.TOAST_S (gradio's default is 10 s for all)."""
    import re
    from pathlib import Path

    root = Path(app.__file__).resolve().parent
    files = [root / "app.py", *(root / "app_support").rglob("*.py")]
    found = [f"{p.relative_to(root)}:{i}" for p in files if p.name != "wiring.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bgr\.Error\(", line)]
    assert found == [], found
    short, long = wiring.toast("Load a model first."), wiring.toast("word " * 200)
    assert (short.duration, long.duration) == wiring.TOAST_S and not short.print_exception
