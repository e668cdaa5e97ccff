"""Issue 22, tiny-shapes-sd3 at 30% params removed: selection budgets / reconstruction settings /
methods, chosen on a validation set, confirmed on the 64 held-out prompts.

Validation set: 96 training captions spread over the 142 training captions that are NOT among
the 64 calibration prompts ``calibration_prompts(ref, 64)`` (which hold the 32 the methods score
with and reconstruction fits on by default, and the 64 a "more calibration prompts" run uses),
seeds 20000..20095 (the evaluation uses seeds 0..63, calibration
10000..). The held-out test set: ``evaluation_prompts(ref, 64)`` with seeds 0..63, as
``compare_methods``.

    python -m benchmarks.sd3_30_search score            # cache Taylor / EcoDiff / magnitude scores
    python -m benchmarks.sd3_30_search val NAME JSON    # one configuration on the validation set
    python -m benchmarks.sd3_30_search test NAME JSON   # the same on the held-out prompts

JSON: {"method": "diffpruning", "sparsity": 0.3, "budget": {LayerBudget fields}, "scope": "local",
"settings": {method settings; "n_prompts": how many calibration prompts it scores with},
"caps": {"ff_context": 1.0} (a per-structure cap by name suffix, see ``_patch_caps``),
"recon": {ReconstructSettings fields; "n_prompts": how many calibration prompts} | null (plain)}.
Each run appends one line to $SD3Q_DIR/results.jsonl (default /tmp/sd3q); scores and the
original's outputs per set are cached there. The machinery (sets, caching, evaluation) is
``benchmarks.q3_search``'s, for this model. The figures and what they showed:
``benchmarks/results/sd3_30_experiments.md``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks import q3_search

MODEL = "tiny-shapes-sd3"
CACHE = Path(os.environ.get("SD3Q_DIR", "/tmp/sd3q"))

if __name__ == "__main__":
    q3_search.main([MODEL, *(sys.argv[1:] or ["score"])], root=CACHE, cache=CACHE)
