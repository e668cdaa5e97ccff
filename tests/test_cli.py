"""``python -m pruning``: commands run in-process through ``main(argv)`` on a saved tiny SD."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pruning.catalog import catalog
from pruning.cli import build_parser, main
from pruning.export import load_pruned, load_pruned_denoiser
from pruning.plan import PruningPlan

ROOT = Path(__file__).resolve().parent.parent
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture(scope="module", autouse=True)
def help_proc():
    """``python -m pruning --help`` in a subprocess, started first so its imports overlap the other tests."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pruning", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    yield proc
    proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def plan_file(sd_folder, sd_folder_handle):
    plan = PruningPlan(family="sd", base=sd_folder_handle.model_ref, removed_operators=("mid_block.resnets.0",),
                       kept_heads={ATTN: (0,)})
    path = sd_folder.parent / "plan.json"
    path.write_text(plan.to_json())
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_text(capsys, sd_folder, sd_folder_handle):
    code, out, err = run(capsys, "info", "--model", sd_folder)
    assert code == 0, err
    params = sum(p.numel() for p in sd_folder_handle.denoiser.parameters())
    assert "family:     sd" in out and sd_folder_handle.model_ref in out
    assert f"({params:,})" in out
    for word in ("operators by kind", "structures by kind", "resnet", "head", "neuron", "group", "attention"):
        assert word in out


def test_info_json_matches_catalog(capsys, sd_folder, sd_folder_handle):
    code, out, _ = run(capsys, "info", "--model", sd_folder, "--json", "--sample-size", 16)
    assert code == 0
    facts = json.loads(out)
    assert facts["sample_size"] == 16 and facts["resolution"] == 32
    ops, st = catalog(sd_folder_handle.denoiser, sample_size=16)
    assert facts["params"] == ops.attrs["total_params"] and facts["macs"] == ops.attrs["total_macs"]
    assert facts["macs"] > 3 * catalog(sd_folder_handle.denoiser, sample_size=8)[0].attrs["total_macs"]
    assert facts["family"] == "sd" and facts["model_ref"] == sd_folder_handle.model_ref
    for kind, rows in ops.groupby("kind"):
        assert facts["operators"][kind]["count"] == len(rows)
        assert facts["operators"][kind]["macs"] == rows["macs"].sum()
    for kind, rows in st.groupby("kind"):
        assert facts["structures"][kind]["units"] == rows["units"].sum()
        assert facts["structures"][kind]["params"] == rows["params"].sum()
    assert set(facts["kind_shares"]) == {"attention", "ffn", "resnet", "proj_mlp"}


def test_info_reference_sd15(capsys):
    code, out, _ = run(capsys, "info", "--reference", "sd15")
    assert code == 0
    assert "859.5M params" in out and "resnet 62.6%" in out and "ffn 17.3%" in out


def test_generate_original_only(capsys, sd_folder, tmp_path):
    code, out, err = run(capsys, "generate", "--model", sd_folder, "--prompt", "a red circle",
                         "--seed", 0, "--seed", 3, "--steps", 1, "--out", tmp_path / "imgs")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "imgs")) == ["original_p0_seed0.png", "original_p0_seed3.png"]
    assert Image.open(tmp_path / "imgs" / "original_p0_seed0.png").size == (32, 32)
    assert "original" in out and "MACs" in out


def test_generate_with_plan(capsys, sd_folder, plan_file, tmp_path):
    code, out, err = run(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--prompt", "b",
                         "--steps", 1, "--plan", plan_file, "--out", tmp_path)
    assert code == 0, err
    assert "warning" not in err  # the plan was made for this model
    names = {f"{v}_p{i}_seed0.png" for v in ("original", "pruned") for i in (0, 1)}
    assert set(os.listdir(tmp_path)) == names
    pruned = next(line for line in out.splitlines() if line.startswith("pruned"))
    assert "removed" in pruned


def test_export_then_load_pruned(capsys, sd_folder, sd_folder_handle, plan_file, tmp_path):
    out_dir = tmp_path / "export"
    code, out, err = run(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out_dir)
    assert code == 0, err
    assert str(out_dir) in out
    small = load_pruned_denoiser(out_dir)
    removed = sum(p.numel() for p in sd_folder_handle.denoiser.parameters()) - sum(p.numel() for p in small.parameters())
    assert removed > 0 and f"{removed:,} removed" in out
    # load_pruned: one type, a Handle; a denoiser-only export takes the other components from the plan's base
    h = load_pruned(out_dir)
    assert h.family == "sd" and h.model_ref.startswith("pruned:") and h.denoiser.pruning_plan == small.pruning_plan
    assert all(torch.equal(a, b) for a, b in zip(h.denoiser.state_dict().values(), small.state_dict().values()))
    # exporting again needs --overwrite
    code, _, err = run(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out_dir)
    assert code == 2 and "already exists" in err


def _assert_one_line_error(code, err, culprit):
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert culprit in err


def test_bad_model(capsys, tmp_path):
    code, _, err = run(capsys, "info", "--model", tmp_path / "missing")
    _assert_one_line_error(code, err, "missing")
    code, _, err = run(capsys, "info", "--model", "no-such-model")
    _assert_one_line_error(code, err, "no-such-model")


def test_bad_plan_path(capsys, sd_folder, tmp_path):
    code, _, err = run(capsys, "export", "--model", sd_folder, "--plan", tmp_path / "nope.json",
                       "--out", tmp_path / "x")
    _assert_one_line_error(code, err, "nope.json")
    assert not (tmp_path / "x").exists()


def test_plan_for_another_family(capsys, sd_folder, tmp_path):
    plan = tmp_path / "flux_plan.json"
    plan.write_text(PruningPlan(family="flux", base="tiny:flux").to_json())
    code, _, err = run(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--plan", plan,
                       "--out", tmp_path / "imgs")
    _assert_one_line_error(code, err, "flux_plan.json")
    assert "'flux'" in err


def test_usage_errors(capsys):
    _assert_one_line_error(*run(capsys, "info")[::2], "--model")
    _assert_one_line_error(*run(capsys, "info", "--reference", "sd99")[::2], "sd99")
    _assert_one_line_error(*run(capsys, "frobnicate")[::2], "frobnicate")
    _assert_one_line_error(*run(capsys, "generate", "--model", "x", "--prompt", "a", "--steps", "0",
                                "--out", "o")[::2], "--steps")


@pytest.mark.parametrize("command", sorted(build_parser()._commands))
def test_subcommand_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "usage:" in out


def test_module_help_subprocess(help_proc):
    out, err = help_proc.communicate(timeout=120)
    assert help_proc.returncode == 0, err
    assert all(name in out for name in ("info", "generate", "export"))


def test_reconstruct_and_export_reconstruct(capsys, sd_folder, sd_folder_handle, plan_file, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["pruning.reconstruct"], "DEFAULT_PROMPTS", 8)  # export's defaults, on fewer prompts: the wiring
    code, out, err = run(capsys, "reconstruct", "--model", sd_folder, "--plan", plan_file, "--out", tmp_path / "r",
                         "--prompt", "a red circle", "--prompt", "a blue square", "--steps", 2, "--ridge", 0.5,
                         "--compensate-operators")
    assert code == 0, err
    assert "reconstructed in" in out and "1 operator compensated" in out and "re-fitted" in out
    plan = load_pruned_denoiser(tmp_path / "r").pruning_plan
    assert plan.reconstruction["settings"]["ridge"] == 0.5 and plan.compensated == ("mid_block.resnets.0",)
    code, out, err = run(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", tmp_path / "e",
                         "--reconstruct")
    assert code == 0 and "reconstructed in" in out, err
    code, _, err = run(capsys, "reconstruct", "--model", sd_folder, "--plan", plan_file, "--out", tmp_path / "x",
                       "--ridge", -1)
    assert code == 2 and "ridge" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


CHUNKED = {  # small runs: 1 + 4 units (Taylor: the clean images, 4 timesteps), 2 + 4 (EcoDiff: 2 targets, 4 steps)
    "taylor": ["--prompts", "a red circle", "a blue square", "--steps", 2, "--stride", 250, "--thr", 0],
    "ecodiff": ["--prompts", "a red circle", "a blue square", "a green square", "--steps", 2, "--epochs", 2,
                "--batch-size", 2],
}


@pytest.mark.parametrize("method", sorted(CHUNKED))
def test_a_chunked_run_over_several_calls_equals_one_call(capsys, sd_folder, tmp_path, method):
    from pruning.cli.score import CHUNK_NOT_DONE
    from pruning.methods import Scores

    whole = tmp_path / "whole.csv"
    code, _, err = run(capsys, method, "--model", sd_folder, "--out", whole, *CHUNKED[method])
    assert code == 0, err
    out, state = tmp_path / "chunked.csv", tmp_path / "run.safetensors"
    argv = [method, "--model", sd_folder, "--out", out, *CHUNKED[method], "--chunk-units", 2, "--state", state]
    calls = []
    while True:
        code, text, err = run(capsys, *argv)
        calls.append(code)
        if code != CHUNK_NOT_DONE:
            break
        assert state.is_file() and not out.exists(), text  # the state is kept, the scores only come at the end
        assert "the run is not finished" in text and "run the same command again" in text
        assert len(calls) < 10
    assert code == 0, err
    assert calls == [CHUNK_NOT_DONE] * (len(calls) - 1) + [0] and len(calls) >= 3
    assert "no longer needed" in text and state.is_file()  # never deleted
    a, b = Scores.read(out), Scores.read(whole)
    assert a.partial is False and a.settings == b.settings and a.info == b.info
    assert a.table.equals(b.table)  # bit for bit


def test_chunk_options_are_checked(capsys, sd_folder, tmp_path):
    base = ["taylor", "--model", sd_folder, "--out", tmp_path / "s.csv", *CHUNKED["taylor"]]
    state = tmp_path / "run.safetensors"
    _assert_one_line_error(*run(capsys, *base, "--chunk-s", -1, "--state", state)[::2], "--chunk-s")
    _assert_one_line_error(*run(capsys, *base, "--chunk-s", "soon", "--state", state)[::2], "--chunk-s")
    _assert_one_line_error(*run(capsys, *base, "--chunk-units", 0, "--state", state)[::2], "--chunk-units")
    _assert_one_line_error(*run(capsys, *base, "--chunk-s", 60)[::2], "--state")
    _assert_one_line_error(*run(capsys, *base, "--chunk-s", 60, "--state", tmp_path)[::2], "--state")
    # a state of another method, and of other settings: refused, naming the state file
    code, _, err = run(capsys, *base, "--chunk-units", 1, "--state", state)
    assert code == 3 and state.is_file(), err
    eco = ["ecodiff", "--model", sd_folder, "--out", tmp_path / "m.csv", *CHUNKED["ecodiff"], "--state", state]
    _assert_one_line_error(*run(capsys, *eco)[::2], "run.safetensors")
    assert "diffpruning run, not ecodiff" in run(capsys, *eco)[2]
    code, _, err = run(capsys, *base, "--stride", 500, "--state", state)
    _assert_one_line_error(code, err, "stride differ")
    assert "run.safetensors" in err and not (tmp_path / "s.csv").exists()


def test_export_plan_only_with_card_and_offline_push(capsys, sd_folder, sd_folder_handle, plan_file, tmp_path):
    out_dir = tmp_path / "plan-only"
    code, out, err = run(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out_dir,
                         "--plan-only")
    assert code == 0, err
    assert "plan only" in out and "card      README.md: latent MSE" in out
    assert (out_dir / "README.md").is_file() and not list(out_dir.rglob("*.safetensors"))
    assert load_pruned(out_dir, base=sd_folder_handle).denoiser.pruning_plan.base == sd_folder_handle.model_ref
    code, _, err = run(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", tmp_path / "x",
                       "--push-to-hub", "someone/pruned")
    _assert_one_line_error(code, err, "'someone/pruned'")
    assert "offline" in err and not (tmp_path / "x").exists()
