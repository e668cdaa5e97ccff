"""Issue 20, part A: outputs versus inputs, and the CLI's and the app's inputs, as careless users
and hostile clients give them. Each case asserts the clear error (one line and exit code 2 for
the CLI, naming the culprit) and that nothing on disk was lost or changed (hashes before and
after). The numbers in the test names are the items of issue 20.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pruning import PruningPlan, export, load_pruned
from pruning.errors import ExportError, PlanError, SettingsError
from pruning.testing import tiny_pipeline
from tests.test_abuse import FQN, ROOT, cli, one_line_error, tree

pytestmark = pytest.mark.usefixtures("bundled_unchanged")  # tests/conftest.py


# --------------------------------------------------------------------------- 1. an output that is an input


@pytest.fixture
def work(tmp_path):
    """A user's folder: a LoRA, a scores file with its side file, a state; hashed before and after."""
    (tmp_path / "style.safetensors").write_bytes(b"the user's LoRA")
    (tmp_path / "scores.csv").write_text("fqn,score\nmid_block.resnets.0,0.5\n")
    (tmp_path / "scores.csv.json").write_text("{}")
    (tmp_path / "run.safetensors").write_bytes(b"a run's state")
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "style.safetensors", tmp_path / "link.safetensors")
    return tmp_path


def _cases(w: Path, model: Path, plan: Path) -> list[tuple[list, list[str]]]:
    """(command line, what the error must name) for every subcommand that writes."""
    m = ["--model", model]
    lora, scores, state = w / "style.safetensors", w / "scores.csv", w / "run.safetensors"
    return [
        (["lora", *m, "--plan", plan, "--lora", lora, "--out", lora], ["--out", "--lora", str(lora)]),
        (["lora", *m, "--plan", plan, "--lora", lora, "--out", w / "link.safetensors"], ["link.safetensors", "--lora"]),
        (["lora", *m, "--plan", plan, "--lora", lora, "--out", w / "sub" / ".." / "style.safetensors"],
         ["sub/../style.safetensors", "--lora"]),
        (["lora", *m, "--plan", plan, "--lora", lora, "--out", model / "x.safetensors"], ["inside", "--model"]),
        (["prune", *m, "--scores", scores, "--target-sparsity", "0.2", "--out", scores], ["--out", "--scores"]),
        (["prune", *m, "--scores", scores, "--target-sparsity", "0.2", "--out", f"{scores}.json"],
         ["scores.csv.json", "side file"]),
        (["export", *m, "--plan", plan, "--out", w, "--overwrite"], ["contains", "--plan", str(plan)]),
        (["export", *m, "--plan", plan, "--out", model / "exported"], ["inside", "--model"]),
        (["export", *m, "--plan", plan, "--lora", w / "sub" / "b.safetensors", "--out", w / "sub", "--overwrite"],
         ["contains", "--lora"]),
        (["reconstruct", *m, "--plan", plan, "--out", plan], ["--out", "--plan"]),
        (["recover", *m, "--plan", plan, "--out", w, "--overwrite"], ["contains", "--plan"]),
        (["generate", *m, "--prompt", "a", "--out", model / "unet"], ["inside", "--model"]),
        (["taylor", *m, "--out", state, "--state", state, "--chunk-units", "1"], ["--out", "--state"]),
        (["score", "taylor", *m, "--out", w / "t.csv", "--state", model / "model_index.json", "--chunk-units", "1"],
         ["--state", "inside", "--model"]),
        (["sweep", *m, "--out", model / "s.csv"], ["inside", "--model"]),
        (["ecodiff", *m, "--fuse-lora", lora, "--out", lora], ["--out", "--fuse-lora"]),
        (["compare", *m, "--fuse-lora", lora, "--out", lora], ["--out", "--fuse-lora"]),
    ]


def test_1_every_command_refuses_an_output_that_is_one_of_its_inputs(capsys, sd_folder, plan_file, work):
    plan = work / "plan.json"
    plan.write_bytes(plan_file.read_bytes())
    (work / "sub" / "b.safetensors").write_bytes(b"another LoRA")
    model_before, work_before, plan_before = tree(sd_folder), tree(work), tree(plan_file.parent)
    cases = _cases(work, sd_folder, plan)
    assert {c[0] for c, _ in cases} >= {"lora", "prune", "export", "reconstruct", "recover", "generate", "taylor",
                                       "score", "sweep", "ecodiff", "compare"}
    for argv, culprits in cases:
        code, out, err = cli(capsys, *argv)
        one_line_error(code, err, *culprits)
        assert "nothing was written" in err, err
    assert tree(sd_folder) == model_before and tree(work) == work_before and tree(plan_file.parent) == plan_before


def test_1_the_library_export_refuses_the_model_folder_and_its_lora(sd_folder_handle, sd_folder, work):
    plan = PruningPlan(family="sd", base=sd_folder_handle.model_ref, removed_operators=("mid_block.resnets.0",))
    before, work_before = tree(sd_folder), tree(work)
    with pytest.raises(SettingsError, match="is inside the model folder"):
        export(sd_folder_handle, plan, sd_folder / "exported")
    with pytest.raises(SettingsError, match="contains lora"):
        export(sd_folder_handle, plan, work, overwrite=True, lora=work / "style.safetensors")
    assert tree(sd_folder) == before and tree(work) == work_before


def test_1_a_distinct_output_still_works(capsys, sd_folder, plan_file, tmp_path):
    assert cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", tmp_path / "fine")[0] == 0


# --------------------------------------------------------------------------- 5. --budget


@pytest.mark.parametrize("value, message", [
    ("0", "got 0"), ("-1", "--budget must be a finite number > 0 (seconds of a run"),
    ("nan", "got nan"), ("inf", "got inf"), ("abc", "invalid float value: 'abc'")])
@pytest.mark.parametrize("command", [["export", "--plan", "PLAN"], ["score", "magnitude"], ["compare"],
                                     ["recover", "--plan", "PLAN", "--out", "OUT"]])
def test_5_budget_is_checked_before_any_work(capsys, sd_folder, plan_file, tmp_path, command, value, message):
    before = tree(plan_file.parent)
    argv = [{"PLAN": plan_file, "OUT": tmp_path / "never"}.get(a, a) for a in command]
    code, out, err = cli(capsys, *argv, "--model", sd_folder, "--estimate", "--budget", value)
    one_line_error(code, err, message)
    assert out == "" and tree(plan_file.parent) == before and not (tmp_path / "never").exists()


def test_5_budget_in_the_library(sd_folder_handle):
    from pruning.estimate import estimate_export

    for bad in (0, -1, float("nan"), float("inf"), "abc"):
        with pytest.raises(SettingsError, match="budget_s must be a finite number > 0"):
            estimate_export(sd_folder_handle, budget_s=bad)


# --------------------------------------------------------------------------- 11. an empty selection


def test_11_an_empty_plan_is_an_error_not_an_export(capsys, sd_folder_handle, sd_folder, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(PruningPlan(family="sd", base=sd_folder_handle.model_ref).to_json())
    full = tmp_path / "full.json"  # a structure that keeps every unit removes nothing either
    full.write_text(PruningPlan(family="sd", base=sd_folder_handle.model_ref, kept_heads={FQN: [0, 1]}).to_json())
    before = tree(tmp_path)
    for plan in (empty, full):
        for command in ("export", "reconstruct", "recover"):
            code, _, err = cli(capsys, command, "--model", sd_folder, "--plan", plan, "--out", tmp_path / "out",
                               *(["--iters", "1"] if command == "recover" else []))
            one_line_error(code, err, "the plan removes nothing")
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()
    with pytest.raises(PlanError, match="the plan removes nothing"):
        export(sd_folder_handle, PruningPlan(family="sd", base=sd_folder_handle.model_ref), tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_11_no_operators_is_not_a_plan(sd_folder_handle):
    import pandas as pd

    from pruning.methods.ldpruner import plan_from_scores

    scores = pd.DataFrame({"fqn": ["mid_block.resnets.0"], "score": [0.1]})
    with pytest.raises(SettingsError, match="operators is empty: name at least one operator"):
        plan_from_scores(sd_folder_handle, scores, operators=[])


# --------------------------------------------------------------------------- 13. one line for a pickle-only folder


@pytest.mark.slow  # a separate process: ~10 s of imports
def test_13_a_pickle_only_folder_is_one_stderr_line(tmp_path):
    folder = tmp_path / "pickled"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    before = tree(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # a separate process: the libraries' loggers write to the real stderr, which in-process capture misses
    proc = subprocess.run([sys.executable, "-m", "pruning", "info", "--model", str(folder)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    one_line_error(proc.returncode, proc.stderr, str(folder), "only safetensors weights are read")
    assert tree(folder) == before


# --------------------------------------------------------------------------- 14. short errors for huge input


def test_14_two_million_duplicate_indices_give_a_short_error(capsys, sd_folder_handle, sd_folder, tmp_path):
    path = tmp_path / "dups.json"
    path.write_text(json.dumps({"schema_version": 1, "family": "sd", "base": sd_folder_handle.model_ref,
                                "kept_heads": {FQN: [0] * 1_900_000}}))  # under the JSON value limit (2M)
    before = tree(tmp_path)
    t0 = time.time()
    code, _, err = cli(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--plan", path,
                       "--out", tmp_path / "imgs")
    one_line_error(code, err, FQN, "1900000 kept indices")
    assert len(err) < 500 and time.time() - t0 < 60, (len(err), time.time() - t0)
    path.write_text(json.dumps({"schema_version": 1, "family": "sd", "base": sd_folder_handle.model_ref,
                                "kept_heads": {FQN: [0] * 2_000_000}}))  # the 2 million: refused as JSON
    code, _, err = cli(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--plan", path,
                       "--out", tmp_path / "imgs")
    one_line_error(code, err, "JSON values, at most 2000000")
    assert len(err) < 500
    assert sorted(tree(tmp_path)) == sorted(before)  # nothing written beside the (rewritten) plan


FF = "down_blocks.0.attentions.0.transformer_blocks.0.ff"  # 128 neurons in the tiny SD


@pytest.mark.parametrize("extra, message", [
    ({"kept_neurons": {FF: [1, 1, 0, 0]}}, "duplicate indices [1, 0]"),
    ({f"x{i}": 1 for i in range(100_000)}, "and 99997 more"),
    ({"removed_operators": {"y" * 1_000_000: 1}}, "characters)"),
    ({"kept_heads": {FQN: "z" * 1_000_000}}, "characters)"),
    ({"kept_heads": {"q" * 1_000_000: [0]}}, "characters)"),
    ({"family": "f" * 1_000_000}, "characters)"),
])
def test_14_errors_quote_a_few_values(sd_folder_handle, extra, message):
    with pytest.raises(PlanError) as e:
        plan = PruningPlan.from_dict({"schema_version": 1, "family": "sd", "base": sd_folder_handle.model_ref, **extra})
        plan.validate(sd_folder_handle.denoiser)
    assert message in str(e.value) and len(str(e.value)) < 500, str(e.value)[:600]


def test_14_manifest_and_scores_lists_are_short(sd_folder_handle, tmp_path):
    from pruning.manifest import MANIFEST
    from pruning.methods import Scores

    plan = PruningPlan(family="sd", base=sd_folder_handle.model_ref, removed_operators=("mid_block.resnets.0",))
    folder = export(sd_folder_handle, plan, tmp_path / "e")
    m = json.loads((folder / MANIFEST).read_text())
    m.update({f"field{i}": 0 for i in range(5_000)})
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ExportError, match="and 4997 more") as e:
        load_pruned(folder)
    assert len(str(e.value)) < 500
    table = tmp_path / "wide.csv"
    table.write_text(",".join(f"c{i}" for i in range(5_000)) + "\n" + ",".join("1" * 5_000) + "\n")
    Path(f"{table}.json").write_text(json.dumps({"format": "pruning-scores/1", "method": "magnitude",
                                                  "level": "unit", "model_ref": "x", "settings": {},
                                                  "partial": False, "info": {}}))
    with pytest.raises(SettingsError) as e:
        Scores.read(table)
    assert len(str(e.value)) < 600 and "more" in str(e.value), str(e.value)[:700]


# --------------------------------------------------------------------------- 15/16. the Hub, offline and by id


def test_15_offline_push_says_nothing_was_exported(capsys, sd_folder, plan_file, tmp_path):
    out = tmp_path / "export"
    code, _, err = cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out, "--plan-only",
                       "--push-to-hub", "user/name")
    one_line_error(code, err, "'user/name'", "offline", "nothing was exported")
    assert "is written" not in err and not out.exists() and list(tmp_path.iterdir()) == []


def test_16_a_hub_base_must_be_a_hub_id(sd_folder_handle, tmp_path, monkeypatch):
    from pruning.manifest import MANIFEST

    ex = sys.modules["pruning.export"]
    plan = PruningPlan(family="sd", base=sd_folder_handle.model_ref, removed_operators=("mid_block.resnets.0",))
    folder = export(sd_folder_handle, plan, tmp_path / "plan-only", plan_only=True)
    looked_up = []
    monkeypatch.setattr(ex, "load_pipeline", lambda source, **kw: looked_up.append(source))
    for base in ("hub:../../etc@x", "hub:/etc/passwd@main", "hub:a/b/c@main", "hub:~/models@main",
                 "hub:org/name@../../x"):
        m = json.loads((folder / MANIFEST).read_text())
        m["plan"]["base"] = base
        (folder / MANIFEST).write_text(json.dumps(m))
        before = tree(folder)
        with pytest.raises(ExportError, match="is not a valid Hub model id|has an invalid revision") as e:
            load_pruned(folder)
        assert repr(base) in str(e.value) and tree(folder) == before
    assert looked_up == []  # refused before any lookup, local or remote


# --------------------------------------------------------------------------- 17. Ctrl-C while importing


def _as_from_a_terminal():
    """The child starts with Ctrl-C's default action, as from a shell: a child inherits an ignored
    SIGINT, and the test process may hold one (a worker process, or an in-process CLI call's
    ``work_done``), which made the command ignore the signal and finish (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_17_ctrl_c_while_the_command_imports(tmp_path, sd_folder, plan_file):
    # a real model and plan: the command has seconds of work (imports, loading, export) whatever the
    # sleep below oversleeps on a loaded machine (a missing plan file ended it before the Ctrl-C came)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for delay in (0.3, 0.8, 1.5):  # after the interpreter's own start (~0.1 s), while torch/diffusers import
        proc = subprocess.Popen([sys.executable, "-m", "pruning", "export", "--model", str(sd_folder), "--plan",
                                 str(plan_file), "--out", str(tmp_path / "e")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                preexec_fn=_as_from_a_terminal)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err and err.strip().endswith("interrupted"), (delay, err)
        assert err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the app: 8, 9, 10, 11 through its API


@pytest.fixture(scope="module")
def app_url(app_url, tmp_path_factory):
    """The session's app server (tests/conftest.py); this module's clients save files here."""
    pytest.importorskip("gradio_client")
    import tests.test_app as ta

    ta.DOWNLOADS = str(tmp_path_factory.mktemp("downloads"))
    return app_url


@pytest.fixture(scope="module")
def api(app_url):
    from tests.test_app import client

    return client(app_url)


def _app_state():
    """What an API call must not change: the shared model's weights and every export folder."""
    from app_support.exports import EXPORTS
    from tests.test_app import weights_digest

    return weights_digest(), tree(EXPORTS) if EXPORTS.is_dir() else {}


def test_8_wrong_typed_api_values_are_refused(api):
    from gradio_client.exceptions import AppError

    from tests.test_app import PROMPT, frame, table_value

    table = frame(api.predict("operators", api_name="/table_mode")[0])
    before = _app_state()
    said = table[:1] and dict(table[0], prune="yes please")
    with pytest.raises(AppError, match="row 0 .* prune must be true or false, got 'yes please'"):
        api.predict("operators", table_value([said, *table[1:]]), api_name="/plan_totals")
    with pytest.raises(AppError, match="prune must be true or false, got 1"):
        api.predict("operators", table_value([dict(table[0], prune=1), *table[1:]]), api_name="/plan_totals")
    t0 = time.time()
    with pytest.raises(AppError, match="has 100000 rows, at most 20000"):
        api.predict("operators", table_value((table * (100_000 // len(table) + 1))[:100_000]), api_name="/plan_totals")
    assert time.time() - t0 < 30
    nones = dict.fromkeys(table[0])
    with pytest.raises(AppError, match=rf"has {len(table) + 1} rows, this model's operators table has {len(table)}"):
        api.predict("operators", table_value([*table, nones]), api_name="/plan_totals")
    with pytest.raises(AppError, match="repeated: "):
        api.predict("operators", table_value([*table[:-1], table[0]]), api_name="/plan_totals")
    with pytest.raises(AppError, match="steps must be an integer, got 1.5"):
        api.predict(PROMPT, 0, 1.5, "side by side", api_name="/generate")
    with pytest.raises(AppError, match="seed must be an integer, got 0.5"):
        api.predict(PROMPT, 0.5, 2, "side by side", api_name="/generate")
    with pytest.raises(AppError, match=r"images per operator must be an integer in 2..16 .*got 2.5"):
        from tests.test_app import score_args

        api.predict(*score_args("ldpruner", n_gen=2.5), api_name="/score")
    with pytest.raises(AppError, match="full pipeline must be true or false, got '/etc/passwd'"):
        api.predict("/etc/passwd", 0, PROMPT, 2, api_name="/export")
    assert _app_state() == before
    ticked = [dict(r, prune=r["fqn"] == "mid_block.resnets.0") for r in table]  # real booleans still work
    assert frame(api.predict("operators", table_value(ticked), api_name="/plan_totals")[2])


def test_11_the_app_refuses_to_export_an_empty_selection(api):
    from gradio_client.exceptions import AppError

    from tests.test_app import PROMPT, frame, table_value

    table = frame(api.predict("operators", api_name="/table_mode")[0])
    api.predict("operators", table_value([dict(r, prune=False) for r in table]), api_name="/plan_totals")
    before = _app_state()
    with pytest.raises(AppError, match="the plan removes nothing"):
        api.predict(True, 10, PROMPT, 2, api_name="/export")  # refused before the recovery runs
    assert _app_state() == before


def test_9_stop_while_queued_behind_another_session(app_url):
    from gradio_client.exceptions import AppError

    import app
    from tests.test_app import client, score_args
    from tests.test_concurrency import wait_running

    a, b = client(app_url), client(app_url)
    long_run = b.submit(*score_args("ldpruner", n_gen=16, steps=100, granularity="all"), api_name="/score")
    wait_running(b.session_hash)
    queued = a.submit(*score_args("ldpruner", n_gen=2, granularity="all"), api_name="/score")
    time.sleep(1.0)  # A's request waits in the queue behind B's sweep
    assert app.RUNS.running(a.session_hash) == 0
    a.predict(api_name="/stop")  # through the API: no button click stamp
    b.predict(api_name="/stop")
    long_run.result(timeout=60)  # B keeps its partial result
    with pytest.raises(AppError, match="Stop was pressed while it waited in the queue: the run did not start"):
        queued.result(timeout=60)
    runs = [e for e in app.RUNS.log if e["session"] == a.session_hash]
    assert len(runs) == 1 and runs[0]["reason"] == "Stop was pressed while it waited in the queue"
    _, _, _, status, _, _ = a.predict(*score_args("ldpruner", operators=["mid_block.resnets.0"]), api_name="/score")
    assert "Done" in status  # A's next run is not stopped


def test_10_downloads_do_not_pile_up_in_gradios_cache(api):
    import zipfile

    from gradio.utils import get_upload_folder

    from app_support.exports import EXPORTS
    from pruning.files import sha256_file
    from tests.test_app import PROMPTS

    api.predict("magnitude", 0.2, "global", api_name="/prefill")
    downloads = []
    for _ in range(2):
        zip_file, plan_json, *_ = api.predict(False, 0, PROMPTS, 2, api_name="/export")
        assert zipfile.ZipFile(zip_file["value"]).namelist()[0] == "pruned-model/"  # the download works
        downloads += [sha256_file(zip_file["value"]), sha256_file(plan_json["value"])]
    cache = Path(get_upload_folder())  # shared with other gradio apps: look for our zips' contents only
    cached = {sha256_file(p) for p in cache.rglob("pruned-model.zip") if p.is_file()}
    assert not cached & set(downloads[::2])  # nothing of ours was copied into gradio's cache
    served = {sha256_file(p) for p in EXPORTS.glob(f"{api.session_hash[:12]}-*/*") if p.is_file()}
    assert set(downloads) <= served  # the downloads came from our own (bounded) export folder
