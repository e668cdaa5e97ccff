"""Bad input and faults, as a new user or a hostile client produces them: each case gets a clear
error that names the culprit, and nothing is lost or changed (earlier exports and their hashes,
the bundled and cached base weights, files outside our own output).

The numbers in the test names are the causes of issue 10. Cause 1 (cancelled runs) is in
tests/test_concurrency.py, cause 7 (float16/bfloat16) in tests/test_dtypes.py.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruning import PruningPlan, export, load_pruned
from pruning.cli import main
from pruning.compare import check_sparsities
from pruning.errors import ExportError, ModelLoadError, PlanError, PruningError, SettingsError
from pruning.files import sha256_file
from pruning.loading import load_pipeline
from pruning.manifest import MANIFEST, WEIGHTS
from pruning.methods import Scores
from pruning.methods.ecodiff import EcoDiffSettings
from pruning.recover import RecoverSettings
from pruning.sampling import generate_latents
from pruning.testing import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
FQN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *culprits):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for c in culprits:
        assert str(c) in err, (c, err)


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256 (what must not change)."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


pytestmark = pytest.mark.usefixtures("bundled_unchanged")  # tests/conftest.py


# --------------------------------------------------------------------------- 2. overwrite deletes only our exports


def test_2_overwrite_refuses_a_folder_that_is_not_an_export(capsys, sd_folder, plan_file, tmp_path, monkeypatch):
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    (mine / "data").mkdir()
    (mine / "data" / "x.csv").write_text("1,2")
    before = tree(mine)
    monkeypatch.chdir(mine)
    for target in (".", str(mine), str(mine / "data")):
        code, _, err = cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", target, "--overwrite")
        one_line_error(code, err, "refusing to overwrite", "not an earlier export", "nothing was deleted")
    assert tree(mine) == before


def test_2_overwrite_replaces_an_earlier_export_atomically(capsys, sd_folder, plan_file, tmp_path):
    out = tmp_path / "export"
    assert cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out)[0] == 0
    code, _, err = cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out)
    one_line_error(code, err, "already exists", "overwrite")
    assert cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp or old folders left


# --------------------------------------------------------------------------- 3. bounded requests


def test_3_request_sizes_are_bounded():
    with pytest.raises(SettingsError, match="1000 sparsities, at most 20"):
        check_sparsities([0.1] * 1000)
    with pytest.raises(SettingsError, match="recovery iterations must be an integer in 0..100000"):
        RecoverSettings(iters=1_000_000)
    with pytest.raises(SettingsError, match="epochs must be an integer in 1..100"):
        EcoDiffSettings(epochs=10_000)
    with pytest.raises(SettingsError, match="at most 256 in one call"):
        EcoDiffSettings(prompts=["a"] * 1000)
    from pruning.methods.ldpruner import SweepSettings

    with pytest.raises(SettingsError, match="N_gen must be an integer in 0..64"):
        SweepSettings(n_gen=1000)
    from app_support.runs import check_count, check_size

    with pytest.raises(SettingsError, match="this app's limit per request"):
        check_size("recover_iters", 1_000_000)
    with pytest.raises(SettingsError, match="this app takes 1..10 per request"):
        check_count("sparsities", [0.1] * 1000)


# --------------------------------------------------------------------------- 4. plan JSON with wrong types


BAD_PLANS = [
    ({"kept_heads": {FQN: ["a"]}}, rf"kept_heads\['{FQN}'\]\[0\] must be an integer"),
    ({"kept_heads": {FQN: [0.5, 1.7]}}, rf"kept_heads\['{FQN}'\]\[0\] must be an integer >= 0, got 0.5"),
    ({"kept_heads": {FQN: [True]}}, rf"kept_heads\['{FQN}'\]\[0\] must be an integer >= 0, got True"),
    ({"kept_heads": {FQN: 5}}, rf"kept_heads\['{FQN}'\] must be a list of kept unit indices, got 5"),
    ({"kept_heads": [FQN]}, "kept_heads must be a map of FQN"),
    ({"removed_operators": 5}, "removed_operators must be a list of operator FQNs, got 5"),
    ({"removed_operators": None}, "removed_operators must be a list of operator FQNs, got None"),
    ({"removed_operators": [5]}, r"removed_operators\[0\] must be an operator FQN string"),
    ({"base": 123}, "plan base must be a model ref string, got 123"),
    ({"family": ["sd"]}, "plan family"),
    ({"provenance": "x"}, "provenance must be a JSON object"),
]


@pytest.mark.parametrize("bad, message", BAD_PLANS)
def test_4_plan_fields_of_the_wrong_type(bad, message):
    good = {"schema_version": 1, "family": "sd", "base": "tiny:sd"}
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_dict({**good, **bad})


@pytest.mark.parametrize("text, message", [
    ('{"schema_version": 1, "family": "sd", "base": "x", "kept_heads": {"' + FQN + '": [NaN]}}', "NaN is not allowed"),
    ('{"schema_version": 1, "family": "sd", "base": "x", "kept_heads": {"' + FQN + '": [1e400]}}',
     "must be an integer >= 0, got inf"),
    ("[" * 100 + "]" * 100, "nested deeper than 32 levels"),
    ("[1, 2]", "a plan must be a JSON object"),
])
def test_4_plan_files_that_are_not_plans(tmp_path, text, message):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(PlanError, match=message):
        PruningPlan.read(path)


def test_4_plan_file_that_is_not_utf8(capsys, sd_folder, tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = cli(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--plan", path, "--out", tmp_path)
    one_line_error(code, err, "plan.json", "is not UTF-8")


# --------------------------------------------------------------------------- 5. the manifest is not trusted


@pytest.fixture
def an_export(sd, tmp_path):
    plan = PruningPlan(family="sd", base=sd.model_ref, removed_operators=("mid_block.resnets.0",))
    return export(sd, plan, tmp_path / "export")


def _edit(folder: Path, fn) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    fn(m)
    (folder / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("denoiser"), r"missing field\(s\) \['denoiser'\]"),
    (lambda m: m.update(denoiser="unet"), "'denoiser' must be"),
    (lambda m: m.update(denoiser={"name": "../outside/unet", "class": "UNet2DConditionModel"}), "unsupported denoiser"),
    (lambda m: m.pop("files"), r"missing field\(s\) \['files'\]"),
    (lambda m: m.update(files={}), "an export without hashes is refused"),
    (lambda m: m.update(files=["unet"]), "an export without hashes is refused"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "leaves its folder"),
    (lambda m: m["files"].update({f"unet/{WEIGHTS}": "abc"}), "is not a sha256 hex digest"),
    (lambda m: m.update(params="many"), "'params' must be a parameter count"),
    (lambda m: m.update(extra=1), r"unknown field\(s\) \['extra'\]"),
])
def test_5_manifest_fields_are_checked(an_export, edit, message):
    _edit(an_export, edit)
    with pytest.raises(ExportError, match=message):
        load_pruned(an_export)


def test_5_weights_outside_the_export_are_never_read(an_export, tmp_path):
    outside = tmp_path / "outside" / "unet"
    outside.mkdir(parents=True)
    (outside / WEIGHTS).write_bytes((an_export / "unet" / WEIGHTS).read_bytes())
    _edit(an_export, lambda m: m["files"].update({f"../outside/unet/{WEIGHTS}": sha256_file(outside / WEIGHTS)}))
    with pytest.raises(ExportError, match="leaves its folder"):
        load_pruned(an_export)


def test_5_unlisted_weights_in_a_full_pipeline_are_refused(sd, tmp_path):
    plan = PruningPlan(family="sd", base=sd.model_ref, removed_operators=("mid_block.resnets.0",))
    folder = export(sd, plan, tmp_path / "full", full_pipeline=True)
    (folder / "vae" / "extra.safetensors").write_bytes(b"not listed")
    with pytest.raises(ExportError, match="weights the manifest does not list"):
        load_pruned(folder)


# --------------------------------------------------------------------------- 6. sampling values, checked up front


@pytest.mark.parametrize("kw, message", [
    ({"resolution": 100000}, r"resolution must be an integer in 4..128 \(4x the model's native 32 px"),
    ({"resolution": 10}, "resolution must be a multiple of 4"),
    ({"resolution": -64}, "resolution must be an integer in 4..128"),
    ({"resolution": 7}, "resolution must be a multiple of 4"),
    ({"steps": 0}, r"steps must be an integer in 1..1000 \(the schedulers have 1000 training timesteps\), got 0"),
    ({"steps": 1001}, "steps must be an integer in 1..1000"),
    ({"guidance": float("nan")}, "guidance must be a finite number"),
    ({"guidance": "abc"}, "guidance must be a finite number"),
])
def test_6_sampling_values_in_the_library(sd, kw, message):
    with pytest.raises(SettingsError, match=message):
        generate_latents(sd, ["a red circle"], [0], **kw)


@pytest.mark.parametrize("seeds, message", [
    ([2**70], r"seeds\[0\] must be an integer in 0..9223372036854775807"),
    ([None], r"seeds\[0\] must be an integer"),
    ([-1], r"seeds\[0\] must be an integer in 0.."),
    ([0.5], r"seeds\[0\] must be an integer"),
])
def test_6_seeds(sd, seeds, message):
    with pytest.raises(SettingsError, match=message):
        generate_latents(sd, ["a red circle"], seeds)


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "--steps must be an integer in 1..1000"),
    ("--steps", "1001", "--steps must be an integer in 1..1000"),
    ("--resolution", "100000", "--resolution must be an integer in 8..4096"),
    ("--resolution", "10", "resolution must be a multiple of 4"),
    ("--guidance", "nan", "--guidance must be a finite number"),
    ("--seed", str(2**70), "--seed[0] must be an integer"),
])
def test_6_sampling_values_in_the_cli(capsys, sd_folder, tmp_path, flag, value, message):
    code, _, err = cli(capsys, "generate", "--model", sd_folder, "--prompt", "a", flag, value, "--out", tmp_path / "o")
    one_line_error(code, err, message)
    assert not list(tmp_path.rglob("*.png"))


def test_6_flux_sides_must_fit_the_patches():
    from pruning.loading import handle_from_pipe

    flux = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
    with pytest.raises(SettingsError, match="multiple of 8"):  # factor-4 VAE x 2x2 patches; real FLUX: 16
        generate_latents(flux, ["a"], [0], resolution=20)


# --------------------------------------------------------------------------- 8. a full disk during export


def test_8_disk_full_is_one_line_and_keeps_the_old_export(capsys, sd_folder, plan_file, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    out = tmp_path / "export"
    assert cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out)[0] == 0
    before = tree(out)

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")
    monkeypatch.setattr(sys.modules["pruning.export"], "save_file", full)
    code, _, err = cli(capsys, "export", "--model", sd_folder, "--plan", plan_file, "--out", out, "--overwrite")
    one_line_error(code, err, str(out), "no space left on the device")
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# --------------------------------------------------------------------------- 9. NaN and out-of-range values


def test_9_nan_scores_and_masks_are_refused(sd, tmp_path):
    import pandas as pd

    table = pd.DataFrame({"fqn": [FQN, FQN], "index": [0, 1], "score": [0.1, float("nan")]})
    with pytest.raises(SettingsError, match=f"'{FQN}' unit 1 has a non-finite score"):
        Scores("ecodiff", "unit", table, sd.model_ref)
    from pruning.methods.select import plan_from_unit_scores

    with pytest.raises(SettingsError, match="non-finite value"):
        plan_from_unit_scores(sd, {FQN: torch.tensor([0.1, float("nan")])}, target_sparsity=0.1)


def test_9_nan_settings_are_refused(capsys, sd_folder, tmp_path):
    with pytest.raises(SettingsError, match="lr must be a finite number"):
        EcoDiffSettings(lr=float("nan"))
    with pytest.raises(SettingsError, match="recovery lr must be a finite number"):
        RecoverSettings(lr=float("nan"))
    code, _, err = cli(capsys, "compare", "--model", sd_folder, "--sparsities", "1.5", "--out", tmp_path / "q.csv")
    one_line_error(code, err, "target sparsities are fractions between 0 and 1, like 0.2 (the share of the params to "
                   "remove); sparsities[0] is 1.5")
    code, _, err = cli(capsys, "ecodiff", "--model", sd_folder, "--lr", "nan", "--out", tmp_path / "m.safetensors")
    one_line_error(code, err, "lr must be a finite number")


# --------------------------------------------------------------------------- 10/11. damaged side files


@pytest.mark.parametrize("defaults, message", [
    ([1, 2], "must be a JSON object"),
    ({"guidance": "abc"}, "guidance must be a finite number"),
    ({"steps": -5}, "steps must be an integer in 1..1000"),
    ({"resolution": 100000}, "resolution must be an integer in 8..4096"),
    ({"guidance_mode": "turbo"}, "guidance_mode must be one of"),
])
def test_10_damaged_defaults_file(sd_folder, tmp_path, defaults, message):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(sd_folder, folder)
    (folder / "pruning_defaults.json").write_text(json.dumps(defaults))
    with pytest.raises(ModelLoadError, match=message) as e:
        load_pipeline(str(folder))
    assert "pruning_defaults.json" in str(e.value)


def test_11_the_app_refuses_a_damaged_defaults_file(sd_folder, tmp_path, monkeypatch):
    import shutil

    from app_support.cache import ModelCache

    folder = tmp_path / "models" / "m"
    shutil.copytree(sd_folder, folder)
    (folder / "pruning_defaults.json").write_text(json.dumps({"steps": -5, "resolution": 100000}))
    monkeypatch.setenv("PRUNING_MODEL_DIRS", str(tmp_path / "models"))
    with pytest.raises(ModelLoadError, match="steps must be an integer"):
        ModelCache().get(str(folder))


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA GPU"), ("foo", "'foo' is not a torch device"),
                                             ("cuda:7", "no CUDA GPU")])
def test_10_devices(capsys, sd_folder, device, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_line_error(*cli(capsys, "info", "--model", sd_folder, "--device", device)[::2], message)


@pytest.mark.parametrize("content, meta, message", [
    (b"\x00\x01\x02 binary", None, "has no scores.csv.json beside it"),
    (b"fqn,index,score\na,0,1\n", "{corrupt", "not valid JSON"),
    (b"fqn,index,score\na,0,1\n", json.dumps({"format": "something-else"}), "is not pruning-scores/1 metadata"),
    (b"\x00\x01\x02 binary", json.dumps({"format": "pruning-scores/1", "method": "taylor", "level": "unit",
                                         "model_ref": "x", "settings": {}, "partial": False, "info": {}}),
     "the table has no"),
    (b"a,b\n1,2\n", json.dumps({"format": "pruning-scores/1", "method": "taylor", "level": "unit",
                                "model_ref": "x", "settings": {}, "partial": "no", "info": {}}),
     "field 'partial' must be a bool"),
])
def test_10_damaged_scores_files(capsys, sd_folder, tmp_path, content, meta, message):
    path = tmp_path / "scores.csv"
    path.write_bytes(content)
    if meta is not None:
        Path(f"{path}.json").write_text(meta)
    code, _, err = cli(capsys, "prune", "--model", sd_folder, "--scores", path, "--target-sparsity", "0.2",
                       "--out", tmp_path / "plan.json")
    one_line_error(code, err, message)


def test_10_mask_metadata_that_is_not_ours(capsys, sd_folder, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "mask.safetensors"
    save_file({FQN: torch.zeros(2)}, str(path), metadata={"format": "pruning-scores/1", "meta": "{bad json"})
    one_line_error(*cli(capsys, "prune", "--model", sd_folder, "--mask", path, "--target-sparsity", "0.2",
                        "--out", tmp_path / "p.json")[::2], "metadata is not valid JSON")
    save_file({FQN: torch.zeros(2)}, str(path), metadata={"format": "pruning-mask/1"})
    one_line_error(*cli(capsys, "prune", "--model", sd_folder, "--mask", path, "--target-sparsity", "0.2",
                        "--out", tmp_path / "p.json")[::2], "is not a pruning-scores/1 file")


def test_10_sample_size(capsys, sd_folder):
    one_line_error(*cli(capsys, "info", "--model", sd_folder, "--sample-size", "100000")[::2],
                   "--sample-size must be an integer in 1..1024")


# --------------------------------------------------------------------------- 12/13. the app's inputs


def test_12_wrong_typed_values_name_the_input():
    import gradio as gr

    from app_support.inputs import Number, Slider, Table

    with pytest.raises(gr.Error, match="seed must be a number, got 'abc'"):
        Number(0, label="seed").preprocess("abc")
    with pytest.raises(gr.Error, match="images per operator must be a number, got None"):
        Slider(2, 16, label="images per operator").preprocess(None)
    with pytest.raises(gr.Error, match="selection must be a table"):
        Table(label="selection").data_model.model_validate("abc")


@pytest.mark.parametrize("source", ["/etc/shadow", "~/.cache", "../../", "/", "tiny-shapes-sd/../../etc"])
def test_13_the_app_does_not_probe_server_files(source, monkeypatch):
    from app_support.cache import ModelCache

    monkeypatch.delenv("PRUNING_MODEL_DIRS", raising=False)
    with pytest.raises(ModelLoadError) as e:
        ModelCache().get(source)
    assert str(e.value).startswith("local folders are not served here")  # one message, whatever the path


def test_13_allowed_folders(sd_folder, monkeypatch):
    from app_support.cache import ModelCache

    monkeypatch.setenv("PRUNING_MODEL_DIRS", str(sd_folder.parent))
    assert ModelCache().get(str(sd_folder)).family == "sd"


# --------------------------------------------------------------------------- 14. Stop while queued


def test_14_stop_pressed_while_a_run_waits_in_the_queue():
    import threading

    from app_support.runs import Runs, owned

    runs = Runs()
    clicked = runs.clicked()  # the Run button's stamp
    runs.stop("s")  # Stop, while the run still waits for its turn
    ran = []
    with pytest.raises(PruningError, match="Stop was pressed while it waited in the queue: the run did not start"):
        list(owned(lambda c: ran.append(1), runs=runs, session="s", lock=threading.RLock(), clicked_at=clicked))
    assert not ran
    out = list(owned(lambda c: 7, runs=runs, session="s", lock=threading.RLock(), clicked_at=runs.clicked()))
    assert out[-1] == ("done", 7)  # a later click runs


# --------------------------------------------------------------------------- 15. exports do not pile up


def test_15_exports_are_bounded_and_only_ours_are_removed(tmp_path):
    import time

    from app_support.exports import MARKER, cleanup

    root = tmp_path / "exports"
    for i in range(5):
        d = root / f"e{i}"
        d.mkdir(parents=True)
        (d / MARKER).write_text("session-a" if i < 2 else "session-b")
        (d / "model.zip").write_bytes(b"x" * 1000)
        os.utime(d, (time.time() - 10 * (5 - i), time.time() - 10 * (5 - i)))
    foreign = root / "not-ours"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("someone else's")
    assert cleanup(root, max_age_s=3600, max_bytes=10**9, session="session-a") == 2
    assert cleanup(root, max_age_s=3600, max_bytes=2500) == 1  # the oldest goes first
    assert sorted(p.name for p in root.iterdir()) == ["e3", "e4", "not-ours"]
    assert cleanup(root, max_age_s=0, max_bytes=10**9) == 2 and (foreign / "keep.txt").is_file()


# --------------------------------------------------------------------------- 16. the small ones


def test_16_pickle_weights_are_refused_with_one_line_and_never_unpickled(capsys, tmp_path):
    folder = tmp_path / "evil"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    code, _, err = cli(capsys, "info", "--model", folder)
    one_line_error(code, err, "failed to load pipeline")
    assert not marker.exists()


def test_16_remote_code_is_never_run(tmp_path):
    folder = tmp_path / "remote"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "pipeline.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')\n")
    index["_class_name"] = ["pipeline", "EvilPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="unsupported pipeline class"):
        load_pipeline(str(folder))
    assert not (tmp_path / "pwned").exists()


def test_16_ecodiff_out_checked_before_training(capsys, sd_folder, tmp_path):
    out_dir = tmp_path / "a-folder"
    out_dir.mkdir()
    code, _, err = cli(capsys, "ecodiff", "--model", sd_folder, "--steps", "1", "--epochs", "1", "--out", out_dir)
    one_line_error(code, err, "is a folder")
    assert list(tmp_path.rglob("*tmp*")) == []


def test_16_target_sparsity_that_is_not_a_number(capsys, sd, sd_folder, tmp_path):
    from pruning.methods import get

    scores = get("magnitude").score(sd)
    path = scores.write(tmp_path / "mag.csv")
    code, _, err = cli(capsys, "prune", "--model", sd_folder, "--scores", path, "--target-sparsity", "abc",
                       "--out", tmp_path / "p.json")
    one_line_error(code, err, "target sparsity must be a fraction between 0 and 1, like 0.2, got 'abc'")


@pytest.mark.thorough  # a fresh CLI process; Ctrl-C in a fresh process: tests/abuse/test_io.py::test_17
def test_16_two_interrupts_after_an_export_print_no_traceback(sd_folder, plan_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pruning", "export", "--model", str(sd_folder), "--plan",
                             str(plan_file), "--out", str(tmp_path / "e")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    first = proc.stdout.readline()  # "exported ..." : the work is done, the process is finishing
    for _ in range(2):
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            break
    out, err = proc.communicate(timeout=60)
    assert "exported" in first and "Traceback" not in err and proc.returncode in (0, 130), err
