"""The sweep sharded over 2 CPU processes by ``accelerate launch`` equals the in-process sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pruning.loading import load_pipeline
from pruning.methods import Scores
from pruning.methods import ldpruner as ldp
from pruning.testing import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle at the center on a white background", "a blue square at the top left on a black background"]
ARGS = ["--n-gen", "3", "--steps", "2", "--granularity", "fine", "--prompts", *PROMPTS]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start the 2-process sweep first, so it runs while the in-process one is computed."""
    tmp = tmp_path_factory.mktemp("ldp_dist")
    folder = tmp / "tiny-sd"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    out = tmp / "scores.csv"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", env["MASTER_PORT"],
           "-m", "pruning", "sweep", "--model", str(folder), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield folder, out, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_two_process_sweep_equals_single_process(launched):
    folder, out, proc = launched
    h = load_pipeline(str(folder))
    settings = ldp.SweepSettings(prompts=tuple(PROMPTS), n_gen=3, steps=2, granularity="fine")
    single = ldp.sweep(h, settings, show_progress=False)
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"accelerate launch did not finish in 120 s: {proc.communicate()[0][-2000:]}")
    assert proc.returncode == 0, log[-3000:]
    assert "on 2 processes" in log  # really sharded, not one process
    scores = Scores.read(out)
    merged = scores.table
    assert scores.settings == single.attrs["settings"]
    assert scores.model_ref == single.attrs["model_ref"] and scores.partial is False
    assert list(merged["fqn"]) == list(single["fqn"]) and len(merged) == 32
    for col in ("avg_dist", "std_dist", "score"):
        np.testing.assert_allclose(merged[col], single[col], rtol=0, atol=1e-6)
    assert list(merged["rank"]) == list(single["rank"])
    same = ["fqn", "kind", "stage", "level", "block", "depth", "params"]
    pd.testing.assert_frame_equal(merged[same], single[same].reset_index(drop=True), check_dtype=False)
