"""Layout rules from STYLE.md that a refactor could silently break."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported(statement):
    code = (f"import sys; {statement}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'jax', 'pyro', 'numpyro', 'arviz'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement, allowed", [
    ("import ppl_vae", set()),
    ("import ppl_vae.pyro", {"torch", "pyro"}),
    ("import ppl_vae.numpyro", {"jax", "numpyro"}),
])
def test_no_module_imports_both_backends(statement, allowed):
    assert _imported(statement) <= allowed


def test_no_folder_shadows_a_backend_outside_the_package():
    # A folder named after a backend anywhere else in the project (not virtualenvs: only what
    # git tracks) would shadow the library on sys.path.
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    folders = {part for f in tracked.stdout.split() if not f.startswith("ppl_vae/")
               for part in Path(f).parts[:-1]}
    assert not folders & {"pyro", "numpyro", "torch", "jax"}


# Modules one backend needs and the other has no use for: subnormal floats slowed the Pyro
# backend's training on a CPU (ppl_vae/pyro/_numerics.py); the NumPyro backend measured no
# such slow-down (README, "Long runs": its epoch 100 took 0.90x its first epochs).
BACKEND_ONLY = {"pyro": {"_numerics.py"}, "numpyro": set()}


def test_backends_hold_the_same_modules():
    names = {b: {p.name for p in (REPO / "ppl_vae" / b).glob("*.py")} - BACKEND_ONLY[b]
             for b in ("pyro", "numpyro")}
    assert names["pyro"] == names["numpyro"]
