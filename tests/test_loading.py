import json
import time

import pytest
import torch

from pruning import loading
from pruning.errors import ModelLoadError
from pruning.loading import BUNDLED, Handle, family_of, handle_from_pipe, load_pipeline
from pruning.sampling import generate_latents
from pruning.testing import tiny_pipeline


def _save(tmp_path, family, seed=0, name=None):
    folder = tmp_path / (name or f"{family}-{seed}")
    tiny_pipeline(family, seed=seed).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def saved_sd(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("saved"), "sd")


# ------------------------------------------------------------------ handles
def test_handle_fields(tiny_handle):
    h = tiny_handle
    assert isinstance(h, Handle)
    assert h.denoiser is getattr(h.pipe, h.denoiser_name)
    assert h.denoiser_name == ("transformer" if h.family in ("flux", "sd3") else "unet")
    assert h.model_ref == f"tiny:{h.family}" and h.source == h.model_ref
    assert h.device == torch.device("cpu") and h.dtype == torch.float32
    assert h.defaults["steps"] == 4 and h.defaults["resolution"] == 32
    assert h.defaults["guidance"] == loading.FAMILY_DEFAULTS[h.family]["guidance"]


def test_family_of_unsupported_names_class_and_source():
    with pytest.raises(ModelLoadError, match=r"'dict'.*'my-source'"):
        family_of({}, source="my-source")


def test_handle_from_pipe_defaults_override(tiny_sd):
    h = handle_from_pipe(tiny_sd.pipe, model_ref="x", defaults={"steps": 2})
    assert h.defaults["steps"] == 2 and h.defaults["resolution"] == 32


# ------------------------------------------------------------------ local folders
def test_local_round_trip(saved_sd, tiny_sd, tmp_path):
    a, b = load_pipeline(str(saved_sd)), load_pipeline(str(saved_sd))
    assert a.family == b.family == "sd"
    assert a.model_ref == b.model_ref
    assert a.model_ref.startswith(f"local:{saved_sd.resolve()}@")
    assert a.source == str(saved_sd)
    assert a.pipe.safety_checker is None
    other = load_pipeline(str(_save(tmp_path, "sd", seed=1)))
    assert other.model_ref.split("@")[-1] != a.model_ref.split("@")[-1]
    # the reloaded weights generate the same latents as the in-memory pipeline
    z0 = generate_latents(tiny_sd, ["a red circle"], [3], steps=2)
    z1 = generate_latents(a, ["a red circle"], [3], steps=2)
    assert torch.allclose(z0, z1, atol=1e-5)


def test_local_hash_ignores_mtime_but_not_content(saved_sd, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved_sd, copy)  # new paths and mtimes, same content
    assert loading.folder_hash(copy) == loading.folder_hash(saved_sd)
    cfg = copy / "unet" / "config.json"
    cfg.write_text(cfg.read_text().replace('"sample_size": 8', '"sample_size": 16'))
    assert loading.folder_hash(copy) != loading.folder_hash(saved_sd)


def test_pruning_defaults_json_and_dtype(tmp_path):
    folder = _save(tmp_path, "flux")
    (folder / "pruning_defaults.json").write_text(json.dumps({"steps": 3, "guidance": 1.0}))
    h = load_pipeline(str(folder), dtype=torch.bfloat16)
    assert h.family == "flux" and h.denoiser_name == "transformer"
    assert h.defaults["steps"] == 3 and h.defaults["guidance"] == 1.0 and h.defaults["resolution"] == 32
    assert h.dtype == torch.bfloat16 and h.denoiser.dtype == torch.bfloat16


@pytest.mark.parametrize("source", ["./no/such/folder", "/definitely/not/here", "a/b/c"])
def test_missing_local_folder(source):
    with pytest.raises(ModelLoadError, match="does not exist") as e:
        load_pipeline(source)
    assert source in str(e.value)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json") as e:
        load_pipeline(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_file_is_not_a_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file") as e:
        load_pipeline(str(f))
    assert str(f) in str(e.value)


def test_unsupported_class_refused_before_weights(tmp_path, monkeypatch):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    monkeypatch.setattr(loading, "pipeline_from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ModelLoadError, match="PixArtSigmaPipeline") as e:
        load_pipeline(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_unknown_name():
    with pytest.raises(ModelLoadError, match="'tiny-shapes-xl' is not a bundled model"):
        load_pipeline("tiny-shapes-xl")


# ------------------------------------------------------------------ bundled
def test_bundled_missing_says_how_to_train(tmp_path, monkeypatch):
    missing = tmp_path / "tiny-shapes-sd"
    monkeypatch.setitem(BUNDLED, "tiny-shapes-sd", missing)
    with pytest.raises(ModelLoadError, match=r"python -m pruning\.tiny train --arch sd") as e:
        load_pipeline("tiny-shapes-sd")
    assert str(missing) in str(e.value)


def test_bundled_ref_is_content_hash(saved_sd, monkeypatch):
    monkeypatch.setitem(BUNDLED, "tiny-shapes-sd", saved_sd)
    h = load_pipeline("tiny-shapes-sd")
    assert h.model_ref == f"bundled:tiny-shapes-sd@{loading.folder_hash(saved_sd)}"
    assert BUNDLED["tiny-shapes-flux"].parent.name == "assets"


# ------------------------------------------------------------------ Hub
def test_invalid_hub_id():
    with pytest.raises(ModelLoadError, match="not a valid Hub id") as e:
        load_pipeline("org/na me")
    assert "org/na me" in str(e.value)


def test_offline_hub_not_cached():
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the Hub is offline") as e:
        load_pipeline("some-org/not-cached-model@v1")
    assert "some-org/not-cached-model@v1" in str(e.value)
    assert time.monotonic() - t < 2


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "HUB_TIMEOUT_S", 3.0)


def test_unreachable_hub_fails_fast(online):
    # this machine has no route to the Hub: DNS or connect fails, or the timeout hits
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="unreachable") as e:
        load_pipeline("some-org/some-model")
    assert "some-org/some-model" in str(e.value) and "local Hugging Face cache" in str(e.value)
    assert time.monotonic() - t < 10


def _http_error(cls, status):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    return cls(f"{status} error", response=response)


@pytest.mark.parametrize("error, ref, says", [
    ("RepositoryNotFoundError", "nobody/nothing", r"unknown Hub model 'nobody/nothing'"),
    ("RevisionNotFoundError", "org/model@nope", r"revision 'nope' not found.*'org/model@nope'"),
], ids=["unknown_id", "unknown_revision"])
def test_unknown_hub_model(online, monkeypatch, error, ref, says):
    import huggingface_hub.errors

    def fake_info(repo_id, revision, timeout):
        raise _http_error(getattr(huggingface_hub.errors, error), 404)

    monkeypatch.setattr(loading, "_model_info", fake_info)
    with pytest.raises(ModelLoadError, match=says):
        load_pipeline(ref)


def test_offline_hub_from_cache(tmp_path, monkeypatch):
    # a fake Hub cache entry: models--org--name/{refs/main, snapshots/<sha>/...}
    import huggingface_hub.constants as hc

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sdxl"
    _save(repo / "snapshots", "sdxl", name=sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    h = load_pipeline("tiny-org/tiny-sdxl")
    assert h.family == "sdxl" and h.model_ref == f"hub:tiny-org/tiny-sdxl@{sha}"
