"""Runs split over 2 CPU processes by ``accelerate launch`` (gloo) equal the in-process runs: the
sharded LD-Pruner sweep and its fast score (one-step ablation); EcoDiff and Taylor data-parallel within float tolerance, with uneven
shares (3 prompts: 2 + 1) and a process that has no prompt in a batch (a batch of 1); a chunk's
state saved by 2 processes resumes in one (marked thorough: the C3 row runs it). The equality cases share one launch, started first
and run while the single-process references are computed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pruning import methods
from pruning.loading import load_pipeline
from pruning.methods import Scores
from pruning.methods import ldpruner as ldp

pytestmark = pytest.mark.slow  # 2-process accelerate launches

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle at the center", "a blue square at the top left", "a green triangle at the bottom",
           "a yellow circle at the right"]

FAST_PROMPTS = ("a red circle at the center on a white background", "a blue square at the top left on a black background")


def _free_port() -> str:
    with socket.socket() as s:  # a port free now (tests of other sessions may run at the same time)
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _command(*target: str) -> tuple[list[str], dict]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
           *target]
    return cmd, env


def _launch(folder: Path, out: Path, *args: str) -> subprocess.Popen:
    cmd, env = _command("-m", "pruning", *args, "--model", str(folder), "--out", str(out))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, code: int = 0) -> str:
    """The launch's log, once it ended with ``code``."""
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"accelerate launch did not finish in 240 s: {proc.communicate()[0][-2000:]}")
    assert proc.returncode == code, log[-3000:]
    assert "on 2 processes" in log  # really split, not one process
    return log


# The equality cases share one launch (the processes start once, then run the CLI commands one
# after another, as separate invocations would); the chunk case needs its own launch (its exit code).
RUNS = {
    "sweep": ["sweep", "--n-gen", "3", "--steps", "2", "--granularity", "fine", "--prompts", *PROMPTS[:2]],
    "sweep-fast": ["sweep", "--preset", "fast", "--n-gen", "3", "--steps", "4", "--granularity", "fine",
                   "--prompts", *FAST_PROMPTS],
    "ecodiff-empty-share": ["ecodiff", "--steps", "2", "--epochs", "2", "--batch-size", "1", "--prompts", *PROMPTS[:3]],
    "ecodiff-uneven": ["ecodiff", "--steps", "2", "--epochs", "2", "--batch-size", "3", "--prompts", *PROMPTS[:4]],
    "taylor": ["taylor", "--steps", "2", "--stride", "250", "--thr", "0.0", "--prompts", *PROMPTS[:3]],
}
DRIVER = """
import json, sys
import torch.distributed as dist
import pruning.cli.score as score
from pruning.cli import main
end_launch = score._end_launch  # a command ends the process group; here the last one does
score._end_launch = lambda: dist.barrier() if dist.is_initialized() else None
folder, out = sys.argv[1], sys.argv[2]
for name, args in json.loads(sys.argv[3]).items():
    code = main([*args, "--model", folder, "--out", f"{out}/{name}.csv"])
    if code:
        sys.exit(code)
end_launch()
"""


class Launch:
    """The shared launch of :data:`RUNS`; ``output(name)`` waits for it (once) and gives the file."""

    def __init__(self, folder: Path, out: Path):
        import json

        (out / "driver.py").write_text(DRIVER)
        cmd, env = _command(str(out / "driver.py"), str(folder), str(out), json.dumps(RUNS))
        self.out, self.log = out, None
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)

    def output(self, name: str) -> Path:
        if self.log is None:
            self.log = _finish(self.proc)
        return self.out / f"{name}.csv"


@pytest.fixture(scope="module")
def launched(sd_folder, tmp_path_factory):
    """Starts at once and runs while the tests compute their single-process references."""
    launch = Launch(sd_folder, tmp_path_factory.mktemp("launched"))
    yield launch
    if launch.proc.poll() is None:
        launch.proc.kill()


def test_two_process_sweep_equals_single_process(sd_folder, launched):
    prompts = PROMPTS[:2]
    settings = ldp.SweepSettings(prompts=tuple(prompts), n_gen=3, steps=2, granularity="fine")
    single = ldp.sweep(load_pipeline(str(sd_folder)), settings, show_progress=False)
    scores = Scores.read(launched.output("sweep"))
    merged = scores.table
    assert scores.settings == single.attrs["settings"]
    assert scores.model_ref == single.attrs["model_ref"] and scores.partial is False
    assert list(merged["fqn"]) == list(single["fqn"]) and len(merged) == 32
    for col in ("avg_dist", "std_dist", "score"):
        np.testing.assert_allclose(merged[col], single[col], rtol=0, atol=1e-6)
    assert list(merged["rank"]) == list(single["rank"])
    same = ["fqn", "kind", "stage", "level", "block", "depth", "params"]
    pd.testing.assert_frame_equal(merged[same], single[same].reset_index(drop=True), check_dtype=False)


def test_two_process_fast_score_equals_single_process(sd_folder, launched):
    """LD-Pruner's fast score (one-step ablation) sharded over the launch's 2 processes."""
    s = ldp.SweepSettings(prompts=FAST_PROMPTS, n_gen=3, steps=4, granularity="fine", fast=True)
    single = ldp.sweep(load_pipeline(str(sd_folder)), s, show_progress=False)
    merged = Scores.read(launched.output("sweep-fast"))
    assert merged.settings == single.attrs["settings"]
    assert list(merged.table["fqn"]) == list(single["fqn"]) and len(merged.table) == 32
    np.testing.assert_allclose(merged.table["score"], single["score"], rtol=0, atol=1e-6)


def _ecodiff(sd_folder, launched, name: str, n: int, batch: int, epochs: int = 2):
    """The launched EcoDiff run ``name`` of :data:`RUNS` and the single-process one of its settings."""
    s = methods.get("ecodiff").settings(prompts=PROMPTS[:n], steps=2, epochs=epochs, batch_size=batch)
    single = methods.get("ecodiff").score(load_pipeline(str(sd_folder)), s)
    dp = Scores.read(launched.output(name))
    assert dp.settings == single.settings and dp.partial is False and len(dp.info["history"]) == epochs * -(-n // batch)
    assert list(dp.table["fqn"]) == list(single.table["fqn"])
    return dp, single


def test_two_process_ecodiff_with_an_empty_share_equals_single_process(sd_folder, launched):
    """Batches of 1 prompt: rank 0 computes exactly what one process does, rank 1 adds zeros, the
    regularizer is added once and both draw the same gate noise: the same gates to float rounding
    (measured: bit-equal)."""
    dp, single = _ecodiff(sd_folder, launched, "ecodiff-empty-share", n=3, batch=1)
    np.testing.assert_allclose(dp.table["score"], single.table["score"], rtol=1e-6, atol=0)
    for k in ("recon", "reg", "loss", "kept_head", "kept_neuron"):
        np.testing.assert_allclose([r[k] for r in dp.info["history"]], [r[k] for r in single.info["history"]],
                                   rtol=1e-6, atol=0)


def test_two_process_ecodiff_with_uneven_shares_equals_single_process(sd_folder, launched):
    """4 prompts in batches of 3: shares 2 + 1, then 1 + 0. The whole batch's MSE (the history) agrees
    to float rounding (measured 8e-6 relative over 4 steps). The gates agree to 1e-2 (measured 2.4e-3,
    after moves of about 2): the batches of 2 and 1 round differently from the batch of 3 (about
    1e-7 of the largest gate gradient), and AdamW, which divides each gradient by its running
    size, turns that into visible moves for gates whose gradient is near zero."""
    dp, single = _ecodiff(sd_folder, launched, "ecodiff-uneven", n=4, batch=3)
    np.testing.assert_allclose([r["recon"] for r in dp.info["history"]],
                               [r["recon"] for r in single.info["history"]], rtol=1e-4)
    a, b = dp.table["score"].to_numpy(), single.table["score"].to_numpy()
    assert np.abs(b - 3.0).max() > 1.0  # the gates moved far from their initial logit 3
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-2)
    assert np.abs(a - b).mean() < 1e-4  # most gates agree much more closely


def test_two_process_taylor_equals_single_process(sd_folder, launched):
    """3 prompts: shares 2 + 1; the threshold rule sees the loss over all three (measured: scores
    within 5e-6 relative, 2e-7 of the largest)."""
    s = methods.get("taylor").settings(prompts=PROMPTS[:3], steps=2, stride=250, thr=0.0)
    single = methods.get("taylor").score(load_pipeline(str(sd_folder)), s)
    dp = Scores.read(launched.output("taylor"))
    assert dp.settings == single.settings and dp.partial is False
    assert list(dp.table["fqn"]) == list(single.table["fqn"]) and list(dp.table["index"]) == list(single.table["index"])
    b = single.table["score"]
    assert b.nunique() > len(b) // 2  # scores that differ: the comparison means something
    np.testing.assert_allclose(dp.table["score"], b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
    assert dp.info["timesteps"] == single.info["timesteps"] == [0, 250, 500, 750]
    np.testing.assert_allclose(dp.info["losses"], single.info["losses"], rtol=1e-6)


@pytest.mark.thorough  # its own launch; chunked == uninterrupted stays in test_chunks.py and test_cli.py
def test_a_chunk_of_two_processes_resumes_in_one(sd_folder, tmp_path, capsys):
    """The state holds all the clean images (gathered from both shares) and the summed gradients:
    one process finishes the run and gets the single-process scores. Under the launcher, a
    chunk's exit code 3 comes back as the launcher's failure report."""
    from pruning.cli import main

    out, state = tmp_path / "taylor.csv", tmp_path / "run.safetensors"
    args = ["taylor", "--steps", "2", "--stride", "250", "--thr", "0.0", "--prompts", *PROMPTS[:3]]
    proc = _launch(sd_folder, out, *args, "--chunk-units", "3", "--state", str(state))
    single = methods.get("taylor").score(load_pipeline(str(sd_folder)),
                                         methods.get("taylor").settings(prompts=PROMPTS[:3], steps=2, stride=250,
                                                                        thr=0.0))
    log = _finish(proc, code=1)
    assert "chunk     ended at 2/4 timesteps (at most) on 2 processes" in log and "exitcode: 3" in log
    assert state.is_file() and not out.exists()
    assert main([*args, "--model", str(sd_folder), "--out", str(out), "--state", str(state)]) == 0
    assert "no longer needed" in capsys.readouterr().out
    dp = Scores.read(out)
    assert dp.info["timesteps"] == single.info["timesteps"] and dp.settings == single.settings
    b = single.table["score"]
    np.testing.assert_allclose(dp.table["score"], b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
