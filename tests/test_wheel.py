"""The wheel carries the model/guide programs and the experiment: built from a copy of the
project, installed into a fresh virtual environment, the README's "your own Pyro model"
snippet and ``python -m ppl_vae`` run from a directory outside the repository, and nothing
lands as a bare top-level ``models`` or ``guides`` package."""

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md", "ppl_vae", "models", "guides")

pytest.importorskip("setuptools")


def readme_snippet(heading):
    """The first ```python block after the README heading ``heading``."""
    text = (REPO / "README.md").read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    return match.group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the project files (the build leaves build/ and
    egg-info behind, which a checkout should not get), without build isolation: no
    network."""
    src = tmp_path_factory.mktemp("src")
    for name in PROJECT_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out), str(src)], check=True, cwd=src)
    (path,) = out.glob("ppl_vae-*.whl")
    return path


def test_wheel_installs_models_and_guides_under_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ppl_vae"}
    for module in ("models/vae_pyro.py", "models/hvae_numpyro.py", "guides/vae_pyro.py",
                   "guides/gmm_pyro.py"):
        assert f"ppl_vae/{module}" in names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel installed: ``(python, site-packages)``."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # the heavy dependencies (torch, pyro) come from this test's environment, appended to
    # the new venv's path; ppl_vae itself only from the wheel. Paths added by a .pth file
    # are not scanned for .pth files, so this environment's editable install stays out.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "--quiet", str(wheel)], check=True)
    return python, site


def test_python_m_ppl_vae_runs_the_experiment_without_the_repository(installed, tmp_path):
    """The installed package runs the example's program: same flags, same outputs."""
    python, site = installed
    out = tmp_path / "run"
    run = subprocess.run(
        [python, "-m", "ppl_vae", "--prior", "vamp", "--epochs", "1", "--max-train", "200",
         "--max-test", "10", "--eval-samples", "30", "--num-pseudo", "10", "--hidden", "32",
         "--warmup", "1", "--no-progress", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| vamp |" in run.stdout
    (record,) = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "ok" and record["environment"]["versions"]["ppl_vae"]
    for name in ("inference_data.nc", "elbo_curves.png", "samples_vamp.png",
                 "checkpoints/vamp/best.npz"):
        assert (out / name).exists(), name
    check = subprocess.run([python, "-c", "import ppl_vae.cli; print(ppl_vae.cli.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert check.stdout.startswith(str(site))


def test_readme_snippet_runs_from_a_fresh_venv_outside_the_repository(installed, tmp_path):
    python, site = installed
    prelude = textwrap.dedent("""
        import importlib.util, torch
        torch.manual_seed(0)
        x_train, x_valid, x_test = ((torch.rand(n, 784) < 0.3).float() for n in (64, 16, 8))
    """)
    check = textwrap.dedent(f"""
        import math, ppl_vae, ppl_vae.models
        assert ppl_vae.models.__file__.startswith({str(site)!r}), ppl_vae.models.__file__
        assert importlib.util.find_spec("models") is None
        assert importlib.util.find_spec("guides") is None
        assert log_px.shape == (8,) and all(math.isfinite(v) for v in log_px)
        print("ok", float(log_px.mean()))
    """)
    code = prelude + readme_snippet("## Using the pieces in your own Pyro model") + check
    run = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")
