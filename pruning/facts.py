"""What a model is made of, as plain data: the one summary behind ``python -m pruning info``, the
app's Model tab and the README tables (params, MACs at the model's generation size, prunable
parts by kind).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> f = model_facts(handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd"))
>>> f["family"], f["macs"] > 0, sorted(f["structures"])
('sd', True, ['channel', 'group', 'head', 'neuron'])
"""

from __future__ import annotations

from .catalog import catalog, kind_shares
from .sampling import spec


def denoiser_facts(denoiser, *, sample_size: int | None = None, text_len: int | None = None) -> dict:
    """Params, MACs (one forward, batch 1, at the given input size) and the prunable parts by kind."""
    ops, st = catalog(denoiser, sample_size=sample_size, text_len=text_len)
    op_kinds = ops.groupby("kind", sort=False).agg(
        count=("fqn", "size"), params=("params", "sum"), param_share=("param_share", "sum"),
        macs=("macs", "sum"), mac_share=("mac_share", "sum"))
    st_kinds = st.groupby("kind", sort=False).agg(
        count=("fqn", "size"), units=("units", "sum"), params=("params", "sum"), param_share=("param_share", "sum"))
    return {"denoiser_class": type(denoiser).__name__, "params": int(ops.attrs["total_params"]),
            "macs": int(ops.attrs["total_macs"]), "operators": _records(op_kinds), "structures": _records(st_kinds),
            "kind_shares": kind_shares(denoiser, st)}


def model_facts(handle) -> dict:
    """:func:`denoiser_facts` at the model's own generation size, plus where it came from."""
    s = spec(handle)
    count = s.count_inputs()
    return {"source": handle.source, "family": handle.family, "model_ref": handle.model_ref,
            "device": str(handle.device), "dtype": str(handle.dtype).removeprefix("torch."),
            "steps": s.steps, "guidance": s.guidance, "resolution": s.resolution, "sample_size": count["sample_size"],
            "text_len": count["text_len"], **denoiser_facts(handle.denoiser, **count)}


def _records(df) -> dict[str, dict]:
    """``{kind: {column: python scalar}}`` from a per-kind DataFrame."""
    return {str(k): {c: v.item() if hasattr(v, "item") else v for c, v in row.items()}
            for k, row in df.to_dict("index").items()}
