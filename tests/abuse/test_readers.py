"""Issue 20, part B: every file we read is checked before use, each case gets one clear error of ours
that names the field or key, and nothing on disk changes.

Items: 2 (resumed chunk states), 3 (LoRA edge values), 4 (a LoRA for another model), 6 (non-finite
LoRAs), 7 (the model card built from data), 12 (scores metadata). The property-based fuzzing of
every reader is in tests/abuse/test_fuzz.py.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning import PruningPlan, export, load_pipeline, methods
from pruning.card import CARD, front_matter
from pruning.chunks import score_chunk
from pruning.errors import SettingsError, StateMismatch
from pruning.files import sha256_file
from pruning.lora import read_lora
from pruning.methods import Scores
from pruning.runs import Budget, RunState
from tests.test_abuse import cli, one_line_error, tree
from tests.test_lora import FLUX_TARGETS, SD_TARGETS, _make_lora

PROMPTS = ["a red circle at the center", "a blue square at the top left", "a green triangle at the bottom"]
OPS = ("mid_block.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0.attn2")
SETTINGS = {
    "ldpruner": dict(prompts=PROMPTS[:2], n_gen=2, steps=2, operators=OPS),
    "taylor": dict(prompts=PROMPTS[:2], steps=2, stride=200, thr=0.0),
    "ecodiff": dict(prompts=PROMPTS, steps=2, epochs=2, batch_size=2),
}
UNITS = {"ldpruner": 1, "taylor": 2, "ecodiff": 3}  # a chunk that stops mid-run, with every kind of field




# --------------------------------------------------------------------------- item 2: resumed states


@pytest.fixture(scope="module")
def h(tiny_sd):
    return tiny_sd


@pytest.fixture(scope="module")
def states(h):
    """A partial state of each resumable method (model tiny:sd)."""
    out = {}
    for name, kw in SETTINGS.items():
        s = methods.get(name).settings(**kw)
        _, state = score_chunk(h, name, s, None, Budget(units=UNITS[name]))
        assert state is not None
        out[name] = (s, state)
    return out


def _edited(states, name, data=None, tensors=None, drop=()):
    s, st = states[name]
    d = {k: v for k, v in st.data.items() if k not in drop}
    t = dict(st.tensors)
    d.update(data or {})
    t.update(tensors or {})
    return s, RunState(st.what, st.model_ref, dict(st.settings), d, t)


def _grad_name(states):
    return next(k for k in states["taylor"][1].tensors if k.startswith("grad."))


CASES = {  # id: (method, edit(states) -> (data, tensors, dropped keys), the field the error names)
    "wrong-shape gradient": ("taylor", lambda st: ({}, {_grad_name(st): torch.zeros(3)}, ()), "grad."),
    "wrong-shape clean images": ("taylor", lambda st: ({}, {"x0": torch.zeros(2, 4, 3, 3)}, ()), "'x0'"),
    "empty data": ("taylor", lambda st: ({}, {}, ("timesteps", "losses")), "data.timesteps is missing"),
    "losses NaN, 1e308, -5": ("taylor", lambda st: ({"timesteps": [0, 200, 400], "losses": ["NaN", 1e308, -5]},
                                                    {}, ()), "data.losses[0]"),
    "timesteps 'abc'": ("taylor", lambda st: ({"timesteps": "abc"}, {}, ()), "data.timesteps must be a list"),
    "100,000 timesteps": ("taylor", lambda st: ({"timesteps": list(range(100_000)), "losses": [1.0] * 100_000},
                                                {}, ()), "data.timesteps has 100000 items"),
    "timesteps 1e30, -1": ("taylor", lambda st: ({"timesteps": [1e30, -1], "losses": [1.0, 1.0]}, {}, ()),
                           "data.timesteps[0]"),
    "timesteps off the schedule": ("taylor", lambda st: ({"timesteps": [0, 5], "losses": [1.0, 1.0]}, {}, ()),
                                   "data.timesteps[1] is 5"),
    "a tensor of another run": ("taylor", lambda st: ({}, {"evil": torch.zeros(1)}, ()), "'evil'"),
    "ecodiff history ['x', 5]": ("ecodiff", lambda st: ({"history": ["x", 5]}, {}, ()), "data.history[0]"),
    "ecodiff targets -3": ("ecodiff", lambda st: ({"targets": -3}, {}, ()), "data.targets"),
    "ecodiff NaN gate logits": ("ecodiff", lambda st: ({}, {k: torch.full_like(v, float("nan")) for k, v in
                                                           st["ecodiff"][1].tensors.items()
                                                           if k.startswith("lambda.")}, ()), "non-finite"),
    "ecodiff wrong-shape target": ("ecodiff", lambda st: ({}, {"target.0": torch.zeros(2, 4, 2, 2)}, ()),
                                   "'target.0'"),
    "ecodiff adam step count": ("ecodiff", lambda st: ({}, {"adam.0.step": torch.tensor(7.0)}, ()), "adam.0.step"),
    "sweep rows without fqn": ("ldpruner", lambda st: ({"rows": [{"avg_dist": 1.0, "std_dist": 1.0, "score": 2.0}]},
                                                       {}, ()), "data.rows[0].fqn is missing"),
    "sweep row of an unknown operator": ("ldpruner", lambda st: ({"rows": [{"fqn": "nope", "avg_dist": 1.0,
                                                                             "std_dist": 1.0, "score": 2.0}]}, {}, ()),
                                         "data.rows[0].fqn"),
    "sweep wrong-shape originals": ("ldpruner", lambda st: ({}, {"originals": torch.zeros(2, 4, 3, 3)}, ()),
                                    "'originals'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_2_a_resumed_state_is_checked_field_by_field(h, states, tmp_path, case):
    name, edit, field_ = CASES[case]
    data, tensors, drop = edit(states)
    s, st = _edited(states, name, data, tensors, drop)
    path = st.save(tmp_path / "state.safetensors")
    before = sha256_file(path)
    with pytest.raises(StateMismatch) as e:
        score_chunk(h, name, s, RunState.load(path), Budget(units=1))
    assert field_ in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)
    assert sha256_file(path) == before


@pytest.mark.parametrize("name", list(SETTINGS))
def test_2_an_unedited_state_still_resumes(h, states, tmp_path, name):
    s, st = states[name]
    scores, _ = score_chunk(h, name, s, RunState.load(st.save(tmp_path / "s.safetensors")), None)
    assert not scores.partial


def test_2_cli_refuses_an_edited_state_in_one_line(capsys, sd_folder, tmp_path):
    state, out = tmp_path / "run.safetensors", tmp_path / "t.csv"
    args = ["taylor", "--model", sd_folder, "--prompts", *PROMPTS[:2], "--steps", "2", "--stride", "200",
            "--thr", "0", "--chunk-units", "2", "--state", state, "--out", out]
    code, _, err = cli(capsys, *args)
    assert code != 2 and state.is_file(), err  # the first chunk: the run is not finished
    st = RunState.load(state)
    RunState(st.what, st.model_ref, st.settings, {**st.data, "timesteps": [1e30, -1]}, st.tensors).save(state)
    before = tree(tmp_path)
    code, _, err = cli(capsys, *args)
    one_line_error(code, err, "--state", "data.timesteps[0]")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- items 3, 4, 6: LoRAs


@pytest.fixture(scope="module")
def shapes_sd():
    return load_pipeline("tiny-shapes-sd")


@pytest.fixture(scope="module")
def flux_lora(tmp_path_factory):
    from pruning.testing import tiny_pipeline

    return _make_lora(tiny_pipeline("flux"), FLUX_TARGETS, tmp_path_factory.mktemp("flux-lora"), 0)


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory, shapes_sd):
    return _make_lora(load_pipeline("tiny-shapes-sd").pipe, SD_TARGETS, tmp_path_factory.mktemp("sd-lora"), 0)


@pytest.fixture(scope="module")
def plan_file(shapes_sd, tmp_path_factory):
    plan = PruningPlan(family="sd", base=shapes_sd.model_ref, removed_operators=("mid_block.resnets.0",))
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(plan.to_json())
    return path


TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
KOHYA = "lora_unet_" + TO_Q.replace(".", "_")


def _peft(path: Path, A, B, meta: dict | None = None) -> Path:
    save_file({f"unet.{TO_Q}.lora_A.weight": A, f"unet.{TO_Q}.lora_B.weight": B}, str(path),
              metadata=None if meta is None else {"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    return path


def _kohya(path: Path, A, B, alpha) -> Path:
    save_file({f"{KOHYA}.lora_down.weight": A, f"{KOHYA}.lora_up.weight": B, f"{KOHYA}.alpha": alpha}, str(path))
    return path


EDGE = {  # id: (write(path) -> path, words of the error)
    "rank-0 factors": (lambda p: _peft(p, torch.zeros(0, 32), torch.zeros(32, 0)), "the rank must be at least 1"),
    "lora_alpha 'abc'": (lambda p: _peft(p, torch.randn(2, 32), torch.randn(32, 2), {"unet.r": 2, "unet.lora_alpha": "abc"}),
                         "lora_alpha"),
    "alpha_pattern a list": (lambda p: _peft(p, torch.randn(2, 32), torch.randn(32, 2),
                                             {"unet.r": 2, "unet.lora_alpha": 2, "unet.alpha_pattern": ["to_q"]}),
                             "alpha_pattern must be an object"),
    "metadata a list": (lambda p: save_file({f"unet.{TO_Q}.lora_A.weight": torch.randn(2, 32),
                                             f"unet.{TO_Q}.lora_B.weight": torch.randn(32, 2)}, str(p),
                                            metadata={"lora_adapter_metadata": "[1, 2]"}) or p, "JSON object"),
    "ranks that differ": (lambda p: _peft(p, torch.randn(2, 32), torch.randn(32, 3)), "the same in lora_A and lora_B"),
}
NON_FINITE = {
    "kohya alpha NaN": (lambda p: _kohya(p, torch.randn(2, 32), torch.randn(32, 2), torch.tensor(float("nan"))), "alpha"),
    "kohya alpha inf": (lambda p: _kohya(p, torch.randn(2, 32), torch.randn(32, 2), torch.tensor(float("inf"))), "alpha"),
    "kohya alpha -1e30": (lambda p: _kohya(p, torch.randn(2, 32), torch.randn(32, 2), torch.tensor(-1e30)), "alpha"),
    "NaN factors": (lambda p: _peft(p, torch.full((2, 32), float("nan")), torch.randn(32, 2)), "non-finite"),
    "inf bias": (lambda p: save_file({f"unet.{TO_Q}.lora_A.weight": torch.randn(2, 32),
                                      f"unet.{TO_Q}.lora_B.weight": torch.randn(32, 2),
                                      f"unet.{TO_Q}.lora_B.bias": torch.full((32,), float("inf"))}, str(p)) or p,
                 "non-finite"),
}


@pytest.mark.parametrize("case", list(EDGE))
def test_3_lora_edge_values_give_our_error(shapes_sd, tmp_path, case):
    write, words = EDGE[case]
    path = write(tmp_path / "lora.safetensors")
    with pytest.raises(SettingsError, match=words) as e:
        read_lora(shapes_sd, path)
    assert "lora.safetensors" in str(e.value)


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_6_non_finite_loras_are_refused_naming_the_key(capsys, shapes_sd, plan_file, tmp_path, case):
    write, words = NON_FINITE[case]
    path = write(tmp_path / "lora.safetensors")
    with pytest.raises(SettingsError, match=words) as e:
        read_lora(shapes_sd, path)
    assert TO_Q in str(e.value), str(e.value)
    before = tree(tmp_path)
    code, _, err = cli(capsys, "lora", "--model", "tiny-shapes-sd", "--plan", plan_file, "--lora", path,
                       "--out", tmp_path / "small.safetensors")
    one_line_error(code, err, TO_Q)
    assert tree(tmp_path) == before


def test_3_cli_rank_zero_is_one_line(capsys, plan_file, tmp_path):
    path = EDGE["rank-0 factors"][0](tmp_path / "lora.safetensors")
    code, _, err = cli(capsys, "lora", "--model", "tiny-shapes-sd", "--plan", plan_file, "--lora", path,
                       "--out", tmp_path / "small.safetensors")
    one_line_error(code, err, TO_Q, "rank")


def test_4_a_flux_lora_on_tiny_shapes_sd_is_refused_everywhere(capsys, shapes_sd, flux_lora, plan_file, tmp_path):
    with pytest.raises(SettingsError, match="another model") as e:
        read_lora(shapes_sd, flux_lora)
    assert "'transformer." in str(e.value) and "more" in str(e.value)  # names the first few keys
    with pytest.raises(SettingsError, match="another model"):  # the library's (and the app's) export path
        export(shapes_sd, PruningPlan.read(plan_file), tmp_path / "exp", lora=flux_lora, card=False)
    assert not (tmp_path / "exp").exists()
    before = {**tree(flux_lora.parent), **tree(plan_file.parent)}
    code, _, err = cli(capsys, "lora", "--model", "tiny-shapes-sd", "--plan", plan_file, "--lora", flux_lora,
                       "--out", tmp_path / "small.safetensors")
    one_line_error(code, err, "transformer.")
    code, _, err = cli(capsys, "export", "--model", "tiny-shapes-sd", "--plan", plan_file, "--lora", flux_lora,
                       "--out", tmp_path / "exp2", "--no-card-eval")
    one_line_error(code, err, "transformer.")
    assert not (tmp_path / "small.safetensors").exists() and not (tmp_path / "exp2").exists()
    assert {**tree(flux_lora.parent), **tree(plan_file.parent)} == before


def test_4_the_app_export_refuses_it(shapes_sd, flux_lora, plan_file, tmp_path):
    from app_support.exports import export_zip

    with pytest.raises(SettingsError, match="another model"):
        export_zip(shapes_sd, PruningPlan.read(plan_file), session="s" * 16, root=tmp_path / "exports",
                   lora=str(flux_lora))
    assert not [p for p in (tmp_path / "exports").rglob("*") if p.is_file() and p.suffix == ".zip"]


def test_4_a_lora_of_this_model_still_reads(shapes_sd, sd_lora):
    lora = read_lora(shapes_sd, sd_lora)
    assert lora.layers and all(k.startswith("unet.") for k in lora.layers)


def test_4_layers_of_the_wrong_shape_are_refused(shapes_sd, tmp_path):
    path = _peft(tmp_path / "lora.safetensors", torch.randn(2, 7), torch.randn(32, 2))
    with pytest.raises(SettingsError, match="another model") as e:
        read_lora(shapes_sd, path)
    assert TO_Q in str(e.value)


# --------------------------------------------------------------------------- item 7: the model card

EVIL_FOLDER = 'evil"); import os; os.system("x")'


@pytest.fixture(scope="module")
def evil_card(sd_folder, tmp_path_factory):
    """An export whose base folder, provenance and settings are hostile text."""
    root = tmp_path_factory.mktemp("evil")
    folder = root / EVIL_FOLDER
    shutil.copytree(sd_folder, folder)
    h = load_pipeline(str(folder))
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=("mid_block.resnets.0",)).with_provenance(
        method="magnitude\n---\ntags: [injected]\n<script>alert(1)</script>",
        settings={"prompt": "a `code` span` <img src=x onerror=alert(1)>", "kinds": ["<script>x</script>"]},
        target_sparsity="<script>")
    out = export(h, plan, root / "out", evaluate=False)
    return (out / CARD).read_text()


def test_7_provenance_cannot_add_tags(evil_card):
    meta = front_matter(evil_card)
    assert "injected" not in json.dumps(meta) and all("\n" not in t for t in meta["tags"])
    assert set(meta) == {"base_model", "library_name", "pipeline_tag", "tags", "pruning"}
    assert evil_card.count("\n---\n") == 1  # the front matter's end: no other YAML document starts


def test_7_no_raw_html_and_code_spans_hold(evil_card):
    assert "<script" not in evil_card and "<img" not in evil_card
    assert "&lt;script&gt;" in evil_card and "&lt;img" in evil_card  # shown, escaped
    settings = next(line for line in evil_card.splitlines() if line.startswith("Settings: "))
    assert settings.startswith("Settings: <code>") and settings.endswith("</code>.") and "`" not in settings.replace("\\`", "")


def test_7_the_snippet_quotes_the_folder_name(evil_card):
    blocks = evil_card.split("```python\n")[1:]
    assert blocks
    for block in blocks:
        code = block.split("\n```", 1)[0]
        tree_ = ast.parse(code)  # valid Python
        calls = [n for n in ast.walk(tree_) if isinstance(n, ast.Call)]
        assert not any(isinstance(c.func, ast.Attribute) and c.func.attr == "system" for c in calls)
        assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(a.name == "os" for a in n.names)
                       for n in ast.walk(tree_))
        strings = [n.value for n in ast.walk(tree_) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert any(EVIL_FOLDER in s for s in strings)  # present, only as a string literal


def test_7_a_prompt_with_a_backtick_stays_in_its_code_block(sd_folder):
    from pruning.card import load_lines

    code = load_lines("x", full_pipeline=False, plan_only=False, base="b", denoiser="unet",
                      prompt='a ``` "quoted" `prompt` <img onerror=1>\nimport os')
    tree_ = ast.parse(code)
    assert "<img" not in code and "`" not in code and "\nimport os" not in code
    assert sum(isinstance(n, ast.ImportFrom) for n in ast.walk(tree_)) == 1  # ours only


# --------------------------------------------------------------------------- item 12: scores metadata


@pytest.fixture(scope="module")
def mask_file(tiny_sd, tmp_path_factory):
    s = methods.get("magnitude").score(tiny_sd)
    path = tmp_path_factory.mktemp("mask") / "mask.safetensors"
    s.write(path)
    return path


def _with_meta(src: Path, dst: Path, edit) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        header = f.metadata()
    meta = json.loads(header["meta"])
    edit(meta)
    save_file(load_file(str(src)), str(dst), metadata={**header, "meta": json.dumps(meta)})
    return dst


BAD_META = {
    "kinds ['evil', 5]": (lambda m: m["settings"].update(kinds=["evil", 5]), "kinds"),
    "an unknown setting": (lambda m: m["settings"].update(evil=1), "evil"),
    "seed -1": (lambda m: m["settings"].update(seed=-1), "seed"),
    "an unknown method": (lambda m: m.update(method="evil"), "evil"),
    "the wrong level": (lambda m: m.update(level="operator"), "level"),
    "an extra field": (lambda m: m.update(extra="x"), "extra"),
    "another direction": (lambda m: m.update(direction="high = prunable"), "direction"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_12_scores_metadata_is_validated(capsys, sd_folder, mask_file, tmp_path, case):
    edit, words = BAD_META[case]
    path = _with_meta(mask_file, tmp_path / "mask.safetensors", edit)
    with pytest.raises(SettingsError, match=words):
        Scores.read(path)
    before = tree(tmp_path)
    code, _, err = cli(capsys, "prune", "--model", sd_folder, "--scores", path, "--target-sparsity", "0.2",
                       "--out", tmp_path / "plan.json")
    one_line_error(code, err, "mask.safetensors")
    assert tree(tmp_path) == before  # no plan written


def test_12_the_side_file_of_a_csv_is_validated(tiny_sd, tmp_path):
    s = methods.get("magnitude").score(tiny_sd)
    path = s.write(tmp_path / "scores.csv")
    side = Path(f"{path}.json")
    meta = json.loads(side.read_text())
    meta["settings"]["kinds"] = ["evil", 5]
    side.write_text(json.dumps(meta))
    with pytest.raises(SettingsError, match="kinds"):
        Scores.read(path)
    assert Scores.from_dict(s.to_dict()).settings == s.settings  # valid data still reads
    with pytest.raises(SettingsError, match="kinds"):
        Scores.from_dict({**s.to_dict(), "settings": {"kinds": ["evil", 5]}})


# --------------------------------------------------------------------------- found by the fuzzer


def test_fuzz_found_a_tensor_name_with_a_newline_is_one_line(shapes_sd, tmp_path):
    import struct

    header = json.dumps({"\n": {"dtype": "F32", "shape": [], "data_offsets": [1, 1]}}).encode()
    path = tmp_path / "lora.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(SettingsError) as e:
        read_lora(shapes_sd, path)
    assert "\n" not in str(e.value)
    with pytest.raises(SettingsError) as e:
        RunState.load(path)
    assert "\n" not in str(e.value)


def test_fuzz_found_json_is_bounded_by_its_values(tmp_path):
    import time

    from pruning.errors import ModelLoadError, PlanError
    from pruning.loading import read_defaults

    (tmp_path / "pruning_defaults.json").write_text("[" + ",".join(["{}"] * 100_000) + "]")  # 300 KB
    with pytest.raises(ModelLoadError, match="at most 65536"):
        read_defaults(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text("[" + "{}," * 2_100_000 + "{}]")  # 6 MB, under the byte limit: 2.1M objects
    t0 = time.perf_counter()
    with pytest.raises(PlanError, match="JSON values"):
        PruningPlan.read(plan)
    assert time.perf_counter() - t0 < 10  # refused before json.loads builds 2.1M objects


@pytest.mark.parametrize("index, score, words", [(2**64, 1.0, "0..2147483647"), (1e19, 1.0, "0..2147483647"),
                                                  (True, 1.0, "true/false"), (0, True, "true/false")])
def test_fuzz_found_unit_indices_that_wrap_or_are_booleans(index, score, words):
    d = {"format": "pruning-scores/1", "method": "magnitude", "level": "unit", "model_ref": "tiny:sd",
         "settings": {}, "partial": False, "info": {},
         "records": [{"fqn": "down_blocks.0.attentions.0.transformer_blocks.0.attn1", "index": index, "score": score}]}
    with pytest.raises(SettingsError, match=words):
        Scores.from_dict(d)


def test_fuzz_found_a_settings_key_with_a_newline_is_one_line():
    st = RunState("taylor", "tiny:sd", {"\n": 1, "steps": 2}, {}, {})
    with pytest.raises(StateMismatch) as e:
        st.check("taylor", "tiny:sd", {"steps": 3})
    assert "\n" not in str(e.value) and "'\\n'" in str(e.value) and "steps" in str(e.value)


def test_7_the_apps_load_snippet_quotes_user_values(tiny_sd, tmp_path):
    """The app's "load it" snippet (not only the card) holds the prompt and the base as inert string
    literals: a prompt that closes its quotes runs no code."""
    import ast

    pytest.importorskip("gradio")
    from app_support.exports import export_zip

    evil = 'x"], [0]); import os; os.system("echo pwned"); (["'
    plan = PruningPlan(family="sd", base=tiny_sd.model_ref, removed_operators=("mid_block.resnets.0",))
    out = export_zip(tiny_sd, plan, session="q" * 16, root=tmp_path / "exports", full_pipeline=False, prompt=evil)
    code = out["snippet"].split("python - <<'PY'\n", 1)[1].split("\nPY", 1)[0]
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    assert not [c for c in calls if getattr(c.func, "attr", "") == "system"]
    assert evil in [n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant)]
