"""Write diagnostics_reference.json: what ArviZ 0.x gives for the inputs of
tests/test_diagnostics_versions.py. Run it under ArviZ 0.23 (Python 3.11 here):

    PYTHONPATH=tests python tests/data/make_diagnostics_reference.py

(``PYTHONPATH=tests``: it imports the test module's inputs.)
"""

import json
import sys
from pathlib import Path

import arviz
import test_diagnostics_versions as t

from ppl_vae import diagnostics

HERE = Path(__file__).resolve().parent

if int(arviz.__version__.split(".")[0]) >= 1:
    sys.exit(f"run this under ArviZ 0.x; found {arviz.__version__}")
right, _ = t.normal_model_fit(1.0)
wrong, _ = t.normal_model_fit(2.0)
loo = diagnostics.loo(right)
table = diagnostics.compare({"right": right, "wrong": wrong})
_, held_out = t.held_out_runs()
held_out_table = diagnostics.compare(held_out)
reference = {
    "arviz": arviz.__version__,
    "khat": {str(k): float(diagnostics.psis_khat(t.pareto_log_weights(k)[None])[0])
             for k in t.SHAPES},
    "loo": {key: loo[key] for key in ("elpd_loo", "se", "p_loo")},
    "compare": {"elpd_diff": float(table.loc["wrong", "elpd_diff"]),
                "dse": float(table.loc["wrong", "dse"])},
    # rows best first (vamp, standard)
    "held_out": {column: [float(v) for v in held_out_table[column]]
                 for column in ("elpd_loo", "se", "elpd_diff", "dse", "weight")},
}
(HERE / "diagnostics_reference.json").write_text(json.dumps(reference, indent=2) + "\n")
print(json.dumps(reference, indent=2))
