"""Shared fixtures: tiny in-memory pipelines of every family, and an offline Hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pruning.loading import handle_from_pipe  # noqa: E402
from pruning.testing import FAMILIES, tiny_pipeline  # noqa: E402

# Tiny models gain nothing from threads, and on a shared 2-core machine intra-op threads
# oversubscribe: 1 thread runs the tiny pipelines 6-10x faster under load.
torch.set_num_threads(int(os.environ.get("PRUNING_TEST_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def _hub_offline():
    """Keep the whole session offline, even if huggingface_hub was imported earlier."""
    import huggingface_hub.constants as hc

    old = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    yield
    hc.HF_HUB_OFFLINE = old


def _tiny(family):
    return handle_from_pipe(tiny_pipeline(family), model_ref=f"tiny:{family}")


@pytest.fixture(scope="session")
def tiny_sd():
    return _tiny("sd")


@pytest.fixture(scope="session")
def tiny_sdxl():
    return _tiny("sdxl")


@pytest.fixture(scope="session")
def tiny_flux():
    return _tiny("flux")


@pytest.fixture(scope="session")
def tiny_sd3():
    return _tiny("sd3")


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_handle(request):
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """The tiny SD pipeline saved as a diffusers folder (safetensors), for the CLI and loading."""
    folder = tmp_path_factory.mktemp("saved") / "tiny-sd"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def sd_handle(sd_folder):
    from pruning.loading import load_pipeline

    return load_pipeline(str(sd_folder))
