"""Property-based fuzzing (Hypothesis) of every reader, a parser each: plans, export manifests, chunk
states, LoRA safetensors headers and metadata, scores files and their side files, masks, scores
data from the app, ``pruning_defaults.json`` and the model card's inputs.

Each reader gets random structures (``st.recursive`` JSON, random safetensors headers) and mutations
of a valid file (its JSON edited field by field, its bytes flipped, cut or extended), and must
return a valid object or raise one of our errors (a :class:`~pruning.errors.PruningError`, one
line), never another exception, within a time bound (and a memory bound for the JSON readers,
measured with ``tracemalloc``); nothing on disk may change (every folder involved is hashed before
and after).

The suite runs the Hypothesis profile "ci" (25 examples per reader, tests/conftest.py); the profile
"thorough" (1,000 each) is the C3 row, ``python -m benchmarks C3``, or ``HYPOTHESIS_PROFILE=thorough``;
``PRUNING_FUZZ_EXAMPLES=10000`` sets the count of either, and ``PRUNING_FUZZ_REPORT=counts.json`` writes
how many examples each reader survived.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from pruning import PruningPlan, export, methods
from pruning.card import _render, front_matter, load_lines
from pruning.chunks import score_chunk
from pruning.errors import PruningError
from pruning.files import sha256_file
from pruning.loading import DEFAULTS_FILE, read_defaults
from pruning.lora import read_lora
from pruning.manifest import MANIFEST, read_manifest, verify_files
from pruning.methods import Scores, check_scores_fit
from pruning.methods.base import parquet_available
from pruning.runs import Budget, RunState
from pruning.testing import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the LoRA maker of test_lora

TIME_LIMIT_S = float(os.environ.get("PRUNING_FUZZ_TIME_LIMIT", "10"))  # per example; generous on a shared CPU
MEMORY_LIMIT = 64 * 2**20  # peak Python allocations of one JSON reader call
BIG_MEMORY_LIMIT = 512 * 2**20  # plans and manifests: up to 16 MiB and 2M values of JSON (validate.MAX_JSON_ITEMS)
# the loaded profile's example count (tests/conftest.py: "ci" or "thorough"), never a stored example
FUZZ = settings(deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
COUNTS: Counter = Counter()

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
PROMPTS = ["a red circle at the center", "a blue square at the top left", "a green triangle at the bottom"]
STATE_SETTINGS = {
    "ldpruner": dict(prompts=PROMPTS[:2], n_gen=2, steps=2, operators=("mid_block.resnets.0", f"{ATTN[:-5]}attn2")),
    "taylor": dict(prompts=PROMPTS[:2], steps=2, stride=200, thr=0.0, kinds=["head"]),
    "ecodiff": dict(prompts=PROMPTS, steps=2, epochs=2, batch_size=2, kinds=["head"]),
}  # heads only: fewer tensors per state, so that a long run reaches 10,000 examples in reasonable time
STATE_UNITS = {"ldpruner": 1, "taylor": 2, "ecodiff": 3}


def _write_report() -> None:
    """``PRUNING_FUZZ_REPORT``: the examples each reader survived so far (JSON), merged with the file's."""
    path = os.environ.get("PRUNING_FUZZ_REPORT")
    if path:
        old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        Path(path).write_text(json.dumps({**old, **COUNTS}, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    _write_report()


# --------------------------------------------------------------------------- the harness


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def survive(reader: str, fn, *folders: Path, memory: bool | int = False):
    """Run one reader call: it returns an object or raises one line of ours, in time (and memory),
    leaving ``folders`` unchanged. Returns the object (or the error)."""
    before = [tree(f) for f in folders]
    if memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    except PruningError as e:
        text = str(e)
        assert text.strip() and "\n" not in text, f"{reader}: not one line: {text!r}"
        out = e
    finally:
        seconds = time.perf_counter() - t0
        if memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert seconds < TIME_LIMIT_S, f"{reader} took {seconds:.1f} s"
    if memory:
        limit = MEMORY_LIMIT if memory is True else memory
        assert peak < limit, f"{reader} allocated {peak / 2**20:.0f} MiB"
    assert [tree(f) for f in folders] == before, f"{reader} changed files on disk"
    COUNTS[reader] += 1
    if COUNTS[reader] % 500 == 0:  # a long run reports as it goes
        _write_report()
    return out


# --------------------------------------------------------------------------- strategies

EDGES = [None, True, False, 0, -1, 1, 2**63, -(2**70), 1e308, -1e308, 1e-320, 0.5, "", "abc", "NaN", "Infinity",
         "-1", "1e30", [], {}, [1, "x"], {"a": None}, "../../etc/passwd", "\n---\ntags: [x]", "<script>x</script>",
         "a`b", "x" * 300]
edges = st.sampled_from(EDGES).map(copy.deepcopy)  # fresh objects: a later edit must not change EDGES
json_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
             | st.text(max_size=20) | edges)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                                        max_size=4), max_leaves=20)


def _mutate_once(draw, node, keys: list[str]):
    """Walk down a random path of ``node`` and replace, delete, add or retype what is there."""
    if isinstance(node, dict) and node and draw(st.integers(0, 2)):
        k = draw(st.sampled_from(sorted(node)))
        node[k] = _mutate_once(draw, node[k], keys)
        return node
    if isinstance(node, list) and node and draw(st.integers(0, 2)):
        i = draw(st.integers(0, len(node) - 1))
        node[i] = _mutate_once(draw, node[i], keys)
        return node
    op = draw(st.sampled_from(["replace", "edge", "delete", "add", "duplicate", "number"]))
    if op == "delete" and isinstance(node, dict) and node:
        node.pop(draw(st.sampled_from(sorted(node))))
        return node
    if op == "delete" and isinstance(node, list) and node:
        node.pop(draw(st.integers(0, len(node) - 1)))
        return node
    if op == "add" and isinstance(node, dict):
        node[draw(st.sampled_from(keys) | st.text(max_size=8))] = draw(json_value)
        return node
    if op == "add" and isinstance(node, list):
        node.append(draw(json_value))
        return node
    if op == "duplicate" and isinstance(node, list) and node:
        return [copy.deepcopy(x) for x in node * draw(st.integers(2, 20))]  # copies: edits stay local
    if op == "number" and isinstance(node, (int, float)) and not isinstance(node, bool):
        return draw(st.sampled_from([node + 1, node - 1, -node, node * 1000, node / 3, float(node), 10 ** 30]))
    return draw(edges) if op == "edge" else draw(json_value)


def _keys(doc, out=None) -> list[str]:
    out = set() if out is None else out
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _keys(v, out)
    return sorted(out) or ["x"]


@st.composite
def mutated(draw, doc):
    """A copy of a JSON document with 1-4 random edits."""
    doc, keys = copy.deepcopy(doc), _keys(doc)
    for _ in range(draw(st.integers(1, 4))):
        doc = _mutate_once(draw, doc, keys)
    return doc


@st.composite
def mutated_bytes(draw, data: bytes, hot: int | None = None):
    """``data`` with 1-8 byte edits (flip, set, insert, delete, truncate, append), most of them in its
    first ``hot`` bytes (a safetensors header) when given."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not b:
            b += b"{"
        top = min(len(b), hot) if hot and draw(st.integers(0, 4)) else len(b)
        i = draw(st.integers(0, max(0, top - 1)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            b[i] = draw(st.sampled_from(b'{}[]",:0123456789-e.\\ \x00\xff'))
        elif op == "insert":
            b[i:i] = draw(st.binary(max_size=8) | st.sampled_from([b'"', b"{", b"]", b"NaN", b"1e999", b"-0"]))
        elif op == "delete":
            del b[i:i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del b[i:]
        else:
            b += draw(st.binary(max_size=64))
    return bytes(b)


def json_sources(valid: dict):
    """Bytes of a JSON file: a random document, a mutated valid one, or the valid file's bytes mutated."""
    text = json.dumps(valid, indent=2).encode()
    return st.one_of(json_value.map(lambda d: json.dumps(d).encode()),
                     mutated(valid).map(lambda d: json.dumps(d).encode()),
                     mutated_bytes(text), st.binary(max_size=200))


def _safetensors_header(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def raw_safetensors(header: dict, data: bytes) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X"]


@st.composite
def random_header(draw, names: list[str]):
    """A random safetensors header (names from ``names`` or random) over random bytes: shapes, dtypes
    and offsets need not agree, the metadata is random strings."""
    entries, offset = {}, 0
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(names) | st.text(max_size=30))
        shape = draw(st.lists(st.integers(-1, 40), max_size=4))
        size = draw(st.integers(0, 256))
        start = offset if draw(st.integers(0, 3)) else draw(st.integers(-5, 300))
        entries[name] = {"dtype": draw(st.sampled_from(DTYPES)), "shape": shape, "data_offsets": [start, start + size]}
        offset += max(size, 0)
    if draw(st.booleans()):
        entries["__metadata__"] = draw(st.dictionaries(st.text(max_size=25) | st.sampled_from(
            ["format", "meta", "lora_adapter_metadata"]), st.text(max_size=40) | json_value.map(json.dumps), max_size=3))
    return raw_safetensors(entries, draw(st.binary(min_size=offset, max_size=offset + 8)))


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- valid inputs


@pytest.fixture(scope="module")
def h(tiny_sd):
    return tiny_sd


@pytest.fixture(scope="module")
def plan(h):
    from pruning.catalog import discover

    s = discover(h.denoiser).structures[ATTN]
    return PruningPlan(family="sd", base=h.model_ref, removed_operators=("mid_block.resnets.0",),
                       kept_heads={ATTN: tuple(range(s.units - 1))}, provenance={"method": "magnitude"},
                       kept_channels={"time_embedding": (0, 1, 2)})  # every kept-unit field mutated too


@pytest.fixture(scope="module")
def export_folder(h, plan, tmp_path_factory):
    return export(h, plan, tmp_path_factory.mktemp("fuzz-export") / "out", card=False)


@pytest.fixture(scope="module")
def unit_scores(h):
    return methods.get("magnitude").score(h, methods.get("magnitude").settings(kinds=["head"]))


# --------------------------------------------------------------------------- plans


@FUZZ
@given(data=st.data())
def test_fuzz_plans(h, plan, data):
    raw = data.draw(json_sources(plan.to_dict()))

    def read():
        p = PruningPlan.read(path)
        assert PruningPlan.from_json(p.to_json()) == p  # a plan read is a valid plan: it round-trips
        p.validate(h.denoiser)  # what load_plan does next: PlanError when it does not fit
        return p

    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d), "plan.json", raw)
        survive("plan", read, Path(d), memory=BIG_MEMORY_LIMIT)


@FUZZ
@given(data=st.data())
def test_fuzz_plans_reconstructed_on_a_methods_compensation(h, plan, data):
    """A plan whose reconstruction started from its method's compensation (``settings.start``,
    pruning.reconstruct.start_record): mutations of that record read or raise one line of ours."""
    from pruning.reconstruct import start_record

    start = {"method": "obsdiff", "damping": 0.01, "groups": 4, "target_sparsity": 0.2}
    seed = {**plan.to_dict(), "reconstruction": {"settings": {"ridge": 0.01, "start": start}, "compensated": []}}
    raw = data.draw(json_sources(seed))

    def read():
        p = PruningPlan.read(path)
        assert PruningPlan.from_json(p.to_json()) == p
        rec = start_record(p)
        assert rec is None or isinstance(rec.get("method"), str) and rec["method"]  # a start names its method
        return p

    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d), "plan.json", raw)
        survive("plan (reconstruction start)", read, Path(d), memory=BIG_MEMORY_LIMIT)


# --------------------------------------------------------------------------- manifests


@FUZZ
@given(data=st.data())
def test_fuzz_manifests(export_folder, data):
    valid = json.loads((export_folder / MANIFEST).read_text())
    raw = data.draw(json_sources(valid))
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "export"
        folder.mkdir()
        for p in export_folder.rglob("*"):
            if p.is_file():
                (folder / p.relative_to(export_folder)).parent.mkdir(parents=True, exist_ok=True)
                (folder / p.relative_to(export_folder)).write_bytes(p.read_bytes())
        write(folder, MANIFEST, raw)

        def read():
            plan_, m = read_manifest(folder)
            assert isinstance(plan_, PruningPlan) and m["format"] == valid["format"]
            verify_files(folder, m)  # what loading does next
            return plan_

        survive("manifest", read, folder, export_folder, memory=BIG_MEMORY_LIMIT)


# --------------------------------------------------------------------------- chunk states


@pytest.fixture(scope="module")
def states(h):
    out = {}
    for name, kw in STATE_SETTINGS.items():
        s = methods.get(name).settings(**kw)
        _, state = score_chunk(h, name, s, None, Budget(units=STATE_UNITS[name]))
        out[name] = (s, state)
    return out


@st.composite
def state_edit(draw, state: RunState):
    """A state with its data mutated and/or tensors replaced, dropped, added or made non-finite."""
    data = draw(mutated(dict(state.data))) if draw(st.booleans()) else dict(state.data)
    tensors = dict(state.tensors)
    for _ in range(draw(st.integers(0 if data != state.data else 1, 3))):
        names = sorted(tensors) or ["x"]
        name = draw(st.sampled_from(names) | st.text(min_size=1, max_size=12))
        op = draw(st.sampled_from(["shape", "dtype", "nan", "drop", "scalar", "empty"]))
        t = tensors.get(name, torch.zeros(2))
        if op == "drop":
            tensors.pop(name, None)
        elif op == "shape":
            tensors[name] = torch.zeros(*draw(st.lists(st.integers(0, 5), max_size=4)))
        elif op == "dtype":
            tensors[name] = t.to(draw(st.sampled_from([torch.float16, torch.int64, torch.uint8, torch.bool,
                                                       torch.float64])))
        elif op == "nan":
            tensors[name] = torch.full_like(t.float(), draw(st.sampled_from([float("nan"), float("inf"), -1e30])))
        elif op == "scalar":
            tensors[name] = torch.tensor(draw(st.floats(allow_nan=True)))
        else:
            tensors[name] = torch.zeros(0)
    what, ref, settings_ = state.what, state.model_ref, dict(state.settings)
    if not draw(st.integers(0, 9)):  # now and then another run's envelope
        what = draw(st.sampled_from([what, "compare", "magnitude", "x"]))
        ref = draw(st.sampled_from([ref, "tiny:flux", ""]))
        settings_ = draw(mutated(settings_))
    return RunState(what, ref, settings_, data, tensors)


@FUZZ
@pytest.mark.parametrize("method", list(STATE_SETTINGS))
@given(data=st.data())
def test_fuzz_chunk_states(h, states, method, data):
    s, valid = states[method]
    with tempfile.TemporaryDirectory() as d:
        path = valid.save(Path(d) / "valid.safetensors")
        if data.draw(st.booleans()):
            try:
                data.draw(state_edit(valid)).save(path)
            except (PruningError, TypeError, ValueError):  # not JSON-able: a state cannot be written so
                pass
        else:
            write(Path(d), path.name, data.draw(mutated_bytes(path.read_bytes(), hot=_safetensors_header(path))))

        def read():
            st_ = RunState.load(path)
            methods.get(method).check_state(h, s, st_)
            return st_

        survive(f"state:{method}", read, Path(d))


# --------------------------------------------------------------------------- LoRAs


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    from test_lora import _make_lora

    return _make_lora(tiny_pipeline("sd"), ["to_q", "to_out.0", "conv1"], tmp_path_factory.mktemp("fuzz-lora"), 0)


@st.composite
def lora_tensors(draw, names: list[str]):
    """A LoRA-like state dict: keys of real modules (peft or kohya style) or not, factors of random
    shapes and values (NaN, inf, huge), alphas of random values."""
    out = {}
    for _ in range(draw(st.integers(1, 4))):
        module = draw(st.sampled_from(names))
        kohya = draw(st.booleans())
        base = "lora_unet_" + module.removeprefix("unet.").replace(".", "_") if kohya else module
        rank = draw(st.integers(0, 3))
        rows, cols = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        fill = draw(st.sampled_from([0.1, float("nan"), float("inf"), 1e30, 0.0]))
        a_key, b_key = (f"{base}.lora_down.weight", f"{base}.lora_up.weight") if kohya else (
            f"{base}.lora_A.weight", f"{base}.lora_B.weight")
        if draw(st.integers(0, 5)):
            out[a_key] = torch.full((rank, cols), fill)
        if draw(st.integers(0, 5)):
            out[b_key] = torch.full((rows, draw(st.sampled_from([rank, rank + 1]))), fill)
        if kohya and draw(st.booleans()):
            out[f"{base}.alpha"] = torch.tensor(draw(st.floats(allow_nan=True, allow_infinity=True)))
    return out


@pytest.fixture(scope="module")
def lora_parts(lora_file):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(lora_file))
    with safe_open(str(lora_file), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    return lora_file.read_bytes(), tensors, meta, sorted({k.rsplit(".lora_", 1)[0] for k in tensors})


@FUZZ
@given(data=st.data())
def test_fuzz_lora_files(h, lora_file, lora_parts, data):
    valid, valid_tensors, valid_meta, names = lora_parts
    kind = data.draw(st.sampled_from(["header", "bytes", "tensors", "metadata"]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lora.safetensors"
        if kind == "header":
            path.write_bytes(data.draw(random_header([*(f"{n}.lora_A.weight" for n in names), "x"])))
        elif kind == "bytes":
            path.write_bytes(data.draw(mutated_bytes(valid, hot=_safetensors_header(lora_file))))
        else:
            tensors = data.draw(lora_tensors(names)) if kind == "tensors" else valid_tensors
            meta = valid_meta
            meta = data.draw(mutated(meta)) if kind == "metadata" or data.draw(st.booleans()) else meta
            save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})

        def read():
            lora = read_lora(h, path)
            for module, (A, B, _bias) in lora.layers.items():  # a LoRA read is finite, rank >= 1, fits
                assert A.shape[0] >= 1 and torch.isfinite(A).all() and torch.isfinite(B).all(), module
            return lora

        survive("lora", read, Path(d), lora_file.parent)


# --------------------------------------------------------------------------- scores, side files, masks


def _cut(h, scores: Scores):
    """What ``prune`` does with scores read: check they fit the model, cut a plan."""
    check_scores_fit(h, scores)
    return methods.to_plan(h, scores, target_sparsity=0.05)


def _valid_scores(scores: Scores) -> None:
    assert scores.table["score"].map(lambda x: x == x and abs(x) != float("inf")).all()
    methods.get(scores.method).settings(**scores.settings)


rows = st.lists(st.fixed_dictionaries({"fqn": st.sampled_from([ATTN, "nope", "", "mid_block"]) | st.text(max_size=8),
                                       "index": json_leaf, "score": json_leaf}), max_size=6)


@FUZZ
@given(data=st.data())
def test_fuzz_scores_tables_and_side_files(h, unit_scores, data):
    fmt = data.draw(st.sampled_from([".csv", ".parquet"]))
    with tempfile.TemporaryDirectory() as d:
        if fmt == ".parquet" and not parquet_available():  # no parquet engine: a .parquet is a CSV's bytes
            path = unit_scores.write(Path(d) / "scores.csv")
            path = path.rename(path.with_suffix(".parquet"))
            Path(f"{path.with_suffix('.csv')}.json").rename(f"{path}.json")
        else:
            path = unit_scores.write(Path(d) / f"scores{fmt}")
        side = Path(f"{path}.json")
        what = data.draw(st.sampled_from(["table", "table-bytes", "side", "side-bytes", "both"]))
        if what in ("table", "both"):
            table = pd.DataFrame(data.draw(rows))
            if fmt == ".csv":
                table.to_csv(path, index=False)
            elif parquet_available():
                try:
                    table.astype(str).to_parquet(path, index=False)
                except Exception:  # noqa: BLE001  pandas cannot write every random table: keep the valid one
                    pass
        if what == "table-bytes":
            path.write_bytes(data.draw(mutated_bytes(path.read_bytes())))
        if what in ("side", "both"):
            side.write_bytes(data.draw(json_sources(json.loads(side.read_text()))))
        if what == "side-bytes":
            side.write_bytes(data.draw(mutated_bytes(side.read_bytes())))

        def read():
            scores = Scores.read(path)
            _valid_scores(scores)
            _cut(h, scores)
            return scores

        survive(f"scores{fmt}", read, Path(d))


@FUZZ
@given(data=st.data())
def test_fuzz_masks(h, unit_scores, data):
    """A mask: unit scores in one .safetensors file (EcoDiff's gate logits, any unit method's)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    ecodiff = Scores("ecodiff", "unit", unit_scores.table, unit_scores.model_ref,
                     methods.get("ecodiff").settings(prompts=PROMPTS, steps=2).to_dict(), False, {"history": []})
    with tempfile.TemporaryDirectory() as d:
        path = data.draw(st.sampled_from([unit_scores, ecodiff])).write(Path(d) / "mask.safetensors")
        kind = data.draw(st.sampled_from(["meta", "tensors", "bytes", "header"]))
        if kind == "bytes":
            path.write_bytes(data.draw(mutated_bytes(path.read_bytes(), hot=_safetensors_header(path))))
        elif kind == "header":
            path.write_bytes(data.draw(random_header([ATTN, "mid_block"])))
        else:
            with safe_open(str(path), "pt") as f:
                header = f.metadata()
            tensors = load_file(str(path))
            meta = json.loads(header["meta"])
            if kind == "meta":
                meta = data.draw(mutated(meta))
            else:
                name = data.draw(st.sampled_from(sorted(tensors)) | st.text(min_size=1, max_size=10))
                tensors[name] = data.draw(st.sampled_from([torch.zeros(0), torch.full((3,), float("nan")),
                                                           torch.zeros(2, 2), torch.ones(10_000),
                                                           torch.tensor([1, 2]), torch.tensor(1e30)]))
            save_file(tensors, str(path), metadata={**header, "meta": json.dumps(meta)})

        def read():
            scores = Scores.read(path)
            _valid_scores(scores)
            _cut(h, scores)
            return scores

        survive("mask", read, Path(d))


@FUZZ
@given(data=st.data())
def test_fuzz_scores_data(h, unit_scores, data):
    """Scores as plain data (the app keeps them in ``gr.State``; a client can send any)."""
    d = data.draw(st.one_of(json_value, mutated(unit_scores.to_dict())))

    def read():
        scores = Scores.from_dict(d)
        _valid_scores(scores)
        _cut(h, scores)
        return scores

    with tempfile.TemporaryDirectory() as tmp:
        survive("scores-data", read, Path(tmp), memory=True)


# --------------------------------------------------------------------------- pruning_defaults.json


@FUZZ
@given(data=st.data())
def test_fuzz_defaults(data):
    valid = {"steps": 20, "guidance": 7.5, "resolution": 64, "negative_prompt": ""}
    with tempfile.TemporaryDirectory() as d:
        write(Path(d), DEFAULTS_FILE, data.draw(json_sources(valid)))

        def read():
            out = read_defaults(Path(d))
            assert isinstance(out, dict)
            return out

        survive("defaults", read, Path(d), memory=True)


# --------------------------------------------------------------------------- the model card's inputs

text = st.text(max_size=40) | st.sampled_from(["<script>alert(1)</script>", "a`b``c```", "\n---\ntags: [injected]",
                                               'evil"); import os; os.system("x")', "<img src=x onerror=1>",
                                               "*bold* _it_ [link](javascript:x) | pipe", "$x$", "\\", "&amp;"])
ALLOWED_CALLS = {"load_pruned", "generate_images", "save", "load_lora_weights"}


@st.composite
def card_inputs(draw, summary: dict):
    prov = draw(st.fixed_dictionaries({"method": text}, optional={
        "settings": st.dictionaries(text, json_value, max_size=3), "target_sparsity": json_value | text}))
    q = None
    if draw(st.booleans()):
        q = {"prompts": draw(st.lists(text, min_size=1, max_size=3)), "seeds": [0, 1], "steps": 4,
             "latent_mse": 0.1, "ssim": 0.5, **({"clip_score_skipped": draw(text)} if draw(st.booleans()) else {})}
    lora = None
    if draw(st.booleans()):
        lora = {"file": "lora/" + draw(text), "source": draw(text), "sliced": 1, "dropped": draw(st.lists(text, max_size=2))}
    card = {"summary": summary, "quality": q, "quality_note": draw(text), "method": str(prov["method"]),
            "reconstruction": draw(st.none() | st.dictionaries(text, json_value, max_size=2)), "recovery": None}
    return prov, card, draw(text), draw(st.none() | text), lora, draw(text)


@pytest.fixture(scope="module")
def card_summary(h, plan):
    from pruning.card import summary_figures

    return summary_figures(h, plan)


@FUZZ
@given(data=st.data())
def test_fuzz_card_inputs(h, plan, card_summary, data):
    prov, card, folder_name, repo, lora, source = data.draw(card_inputs(card_summary))
    handle = SimpleNamespace(source=source, denoiser_name=h.denoiser_name, defaults=h.defaults, model_ref=h.model_ref)

    def build():
        p = PruningPlan(family="sd", base=plan.base, removed_operators=plan.removed_operators,
                        kept_heads=plan.kept_heads, provenance=prov)
        return _render(handle, p, card, full_pipeline=False, plan_only=False, folder_name=folder_name, repo=repo,
                       lora=lora, install="pip install pruning")

    with tempfile.TemporaryDirectory() as d:
        out = survive("card", build, Path(d), memory=True)
    if isinstance(out, PruningError):
        return
    meta = front_matter(out)
    assert set(meta) == {"base_model", "library_name", "pipeline_tag", "tags", "pruning"}
    assert all(isinstance(t, str) and t.replace("-", "").replace("_", "").isalnum() for t in meta["tags"])
    body = out.split("\n---\n", 1)[1]
    assert "<" not in body.replace("<code>", "").replace("</code>", "")  # no HTML but our code elements
    assert "\n---" not in body  # no second YAML block
    for block in body.split("```python\n")[1:]:
        tree_ = ast.parse(block.split("\n```", 1)[0])
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id for n in ast.walk(tree_)
                 if isinstance(n, ast.Call)}
        assert calls <= ALLOWED_CALLS, calls


@FUZZ
@given(text_=st.text(max_size=200) | json_value.map(lambda v: "---\n" + json.dumps(v) + "\n---\n"), data=st.data())
def test_fuzz_card_front_matter_and_snippets(text_, data):
    with tempfile.TemporaryDirectory() as d:
        out = survive("front-matter", lambda: front_matter(text_), Path(d), memory=True)
    assert isinstance(out, (dict, PruningError))
    code = load_lines(data.draw(text), full_pipeline=data.draw(st.booleans()), plan_only=data.draw(st.booleans()),
                      base=data.draw(text), denoiser="unet", prompt=data.draw(text), repo=data.draw(st.none() | text),
                      lora=data.draw(st.none() | text))
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id for n in ast.walk(ast.parse(code))
             if isinstance(n, ast.Call)}
    assert calls <= ALLOWED_CALLS and "<" not in code and "`" not in code


# --------------------------------------------------------------------------- the typed target (app)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.text(max_size=12),
                 st.booleans(), st.none()),
       st.floats(0.01, 0.95), st.floats(0.05, 0.95))
@example("0.3", 0.2, 0.65)
@example(5, 0.2, 0.65)
def test_fuzz_typed_target(value, current, top):
    """Any typed target gives a target the slider can show (the current one, or one in [0.01, top]),
    and words whenever it is not the value as typed, naming that value."""
    from app_support.results import SMALLEST_TARGET, typed_target

    current = min(current, top)
    used, words = typed_target(value, current, top, "", "tiny-shapes-sd")
    assert used == current or SMALLEST_TARGET - 1e-9 <= used <= top + 1e-9
    try:
        typed = None if isinstance(value, bool) or value is None else float(value)
    except ValueError:
        typed = None
    assert used == typed or words, (value, used)
    if words and not isinstance(value, str) and value is not None:
        assert f"{value:g}" in words or repr(value) in words or str(value) in words, (value, words)
