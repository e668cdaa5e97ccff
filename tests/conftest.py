"""Shared fixtures: tiny in-memory pipelines of every family, and an offline Hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # each pytest-xdist worker serves its own app: its own export folder
    import tempfile

    os.environ["PRUNING_EXPORT_DIR"] = os.path.join(tempfile.gettempdir(),
                                                   f"pruning-exports-{os.environ['PYTEST_XDIST_WORKER']}")

import pytest  # noqa: E402
import torch  # noqa: E402

from pruning.loading import handle_from_pipe  # noqa: E402
from pruning.testing import FAMILIES, tiny_pipeline  # noqa: E402

# Tiny models gain nothing from threads, and on a shared 2-core machine intra-op threads
# oversubscribe: 1 thread runs the tiny pipelines 6-10x faster under load.
THREADS = int(os.environ.get("PRUNING_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _threads():
    """Every test starts with the suite's thread count: code under test (benchmarks, training)
    may set its own, and a leaked count slows every later test under load and changes float
    reduction orders (a bit-for-bit comparison of two runs then fails by chance)."""
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
    yield


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
def sd_folder_handle(sd_folder):
    """``sd_folder`` loaded as a user's local folder (random weights)."""
    from pruning.loading import load_pipeline

    return load_pipeline(str(sd_folder))


def _bundled(name):
    from pruning.loading import BUNDLED, load_pipeline

    if not (BUNDLED[name] / "model_index.json").is_file():
        pytest.skip(f"bundled {name} is missing (python -m pruning.tiny train)")
    return load_pipeline(name)


# The bundled (trained) models, loaded once per session. Read them only: a test that changes a
# pipeline (a LoRA adapter, a fused weight) loads its own copy.
@pytest.fixture(scope="session")
def shapes_sd():
    return _bundled("tiny-shapes-sd")


@pytest.fixture(scope="session")
def shapes_flux():
    return _bundled("tiny-shapes-flux")


@pytest.fixture(scope="session")
def shapes_sd3():
    return _bundled("tiny-shapes-sd3")


@pytest.fixture(scope="session")
def app_url():
    """One app server for the whole session (the API, concurrency and browser tests), launched as
    ``python app.py`` launches it."""
    pytest.importorskip("gradio")
    import app

    url = app.launch(prevent_thread_lock=True, quiet=True)
    yield url
    app.demo.close()


# --------------------------------------------------------------------------- the abuse tests (tests/test_abuse.py, tests/abuse/)


@pytest.fixture(scope="module")
def sd(sd_folder_handle):
    return sd_folder_handle


@pytest.fixture(scope="module")
def plan_file(sd, sd_folder):
    from pruning.plan import PruningPlan

    path = sd_folder.parent / "abuse-plan.json"
    path.write_text(PruningPlan(family="sd", base=sd.model_ref, removed_operators=("mid_block.resnets.0",)).to_json())
    return path


@pytest.fixture(scope="module")
def bundled_unchanged():
    """The shipped tiny models never change, whatever the tests throw at the code (a module uses it
    with ``pytestmark = pytest.mark.usefixtures("bundled_unchanged")``)."""
    from pruning.bundled import BUNDLED
    from pruning.loading import folder_hash

    before = {name: folder_hash(path) for name, path in BUNDLED.items()}
    yield
    assert {name: folder_hash(path) for name, path in BUNDLED.items()} == before


# --------------------------------------------------------------------------- Hypothesis profiles
# "ci", the suite's default: a few dozen examples per property (tests/abuse/test_fuzz.py); "thorough":
# the C3 row (``python -m benchmarks C3``) or ``HYPOTHESIS_PROFILE=thorough python -m pytest ...``.
# ``PRUNING_FUZZ_EXAMPLES=N`` sets the count of either.
try:
    from hypothesis import HealthCheck
    from hypothesis import settings as _hypothesis
except ImportError:  # pragma: no cover - hypothesis is in requirements-dev.txt
    pass
else:
    CI_EXAMPLES, THOROUGH_EXAMPLES = 25, 1000
    _common = dict(deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
    _count = os.environ.get("PRUNING_FUZZ_EXAMPLES")
    _hypothesis.register_profile("ci", max_examples=int(_count or CI_EXAMPLES), **_common)
    _hypothesis.register_profile("thorough", max_examples=int(_count or THOROUGH_EXAMPLES), **_common)
    _hypothesis.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --------------------------------------------------------------------------- thorough-only tests
# ``@pytest.mark.thorough``: a heavy variant of an invariant the suite checks more cheaply elsewhere.
# The suite skips it (saying where it runs); the C3 row (``python -m benchmarks C3``) and
# ``PRUNING_THOROUGH=1 python -m pytest -m thorough`` run it.
THOROUGH = os.environ.get("PRUNING_THOROUGH") == "1"


def pytest_collection_modifyitems(config, items):
    if THOROUGH:
        return
    skip = pytest.mark.skip(reason="thorough only: python -m benchmarks C3 (or PRUNING_THOROUGH=1)")
    for item in items:
        if "thorough" in item.keywords:
            item.add_marker(skip)
