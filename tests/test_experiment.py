"""The experiment as a library call (ppl_vae.experiment) and as a command line (ppl_vae.cli,
``python -m ppl_vae``, examples/vamp_mnist.py): one program, both backends."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppl_vae import cli
from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.errors import ConfigError
from ppl_vae.experiment import ExperimentConfig, load_run, run

REPO = Path(__file__).resolve().parents[1]
TINY = dict(prior=("vamp",), epochs=4, warmup=1, max_train=1000, max_test=20, eval_samples=200,
            num_pseudo=10, hidden=(64,), latent_dim=8, lr=3e-3, batch_size=50, progress=False)
TINY_FLAGS = ["--prior", "vamp", "--epochs", "1", "--max-train", "200", "--max-test", "10",
              "--eval-samples", "30", "--num-pseudo", "10", "--hidden", "32", "--no-progress"]


def _cli(flags, module=False):
    head = ["-m", "ppl_vae"] if module else [str(REPO / "examples" / "vamp_mnist.py")]
    proc = subprocess.run([sys.executable, *head, *flags], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_run_from_python_and_load_the_trained_model_back(backend, tmp_path, capsys):
    """run() needs no flags; load_run rebuilds model, guide and prior from best.npz alone,
    with the checkpoint's parameters (the same values), and its own log-likelihood estimate
    of the same 20 test images agrees with the run's: two independent 200-sample IS
    estimates of a mean over 20 images differ by well under 2 nats (their per-image spread
    is a few nats here), while the initial parameters score ~300 nats lower (a uniform
    model's -543)."""
    report = run(ExperimentConfig(backend=backend, out=str(tmp_path), **TINY))
    assert "| vamp |" in report.table() and not report.diverged
    (record,) = report.records
    assert record["status"] == "ok" and record["epochs"] == 4 and record["final_beta"] == 1.0
    assert record["test_log_likelihood"] > -300  # it trained (about -200)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(
        json.dumps(report.records, default=str))

    best = tmp_path / "checkpoints" / "vamp" / "best.npz"
    trained = load_run(best)
    assert trained.config.backend == backend and trained.prior_name == "vamp"
    assert trained.config.hidden == (64,) and trained.config.num_pseudo == 10
    arrays, _ = load_checkpoint(best)
    saved = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    if backend == "pyro":
        import pyro

        current = {k: v.detach().numpy() for k, v in pyro.get_param_store().named_parameters()}
    else:
        from ppl_vae.numpyro.training import _host_params

        current = _host_params(trained.params)
    assert set(current) == set(saved)
    for name in saved:  # the same values, copied
        np.testing.assert_array_equal(current[name], saved[name])

    from ppl_vae.data import load_embedded_mnist, subset_indices

    test = load_embedded_mnist().test
    x = test[subset_indices(len(test), 20)]  # the run's --max-test 20 images
    log_px = trained.log_likelihood(x, num_samples=200)
    assert log_px.shape == (20,)
    assert abs(log_px.mean() - record["test_log_likelihood"]) < 2.0


def test_priors_run_one_at_a_time_into_one_folder_keep_each_others_records(tmp_path):
    """A prior run on its own into a folder that holds another prior's results adds its
    record to metrics.json; running a prior again replaces its own record; a run of another
    model into the folder does not mix with the first model's records, and a metrics.json
    that is not a list of records is replaced, not trusted."""
    tiny = dict(TINY, epochs=1, max_train=200, max_test=5, eval_samples=30, out=str(tmp_path))
    path = tmp_path / "metrics.json"
    (first,) = run(ExperimentConfig(**tiny)).records
    run(ExperimentConfig(**dict(tiny, prior=("standard",))))
    records = json.loads(path.read_text())
    assert [r["prior"] for r in records] == ["vamp", "standard"]
    assert records[0] == json.loads(json.dumps(first, default=str))  # kept as it was
    (again,) = run(ExperimentConfig(**dict(tiny, prior=("vamp",), seed=1))).records
    records = json.loads(path.read_text())
    assert [(r["prior"], r["seed"]) for r in records] == [("standard", 0), ("vamp", 1)]
    run(ExperimentConfig(**dict(tiny, prior=("standard",), model="hvae")))
    assert [(r["prior"], r["model"]) for r in json.loads(path.read_text())] == [
        ("standard", "hvae")]
    path.write_text('{"not": "records"}')
    run(ExperimentConfig(**dict(tiny, prior=("standard",))))
    assert [r["prior"] for r in json.loads(path.read_text())] == ["standard"]


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_an_interrupted_evaluation_continues_where_it_stopped(backend, tmp_path, monkeypatch):
    """The importance-sampled evaluation saves its per-image results as it goes: a run
    interrupted after 4 of 6 test images, resumed, evaluates only the last 2 and reports the
    mean over the 4 saved and the 2 new; resumed again it evaluates nothing and reports the
    same number; with another number of samples it starts over."""
    import importlib

    runner_cls = importlib.import_module(f"ppl_vae.{backend}._runner").Runner
    original = runner_cls.log_weight_chunks
    calls = {"images": [], "stop_after": 4}

    def one_image_at_a_time(self, built, result, test):
        calls["images"].append(len(test))
        for rows, log_w in original(self, built, result, test):
            for i in range(len(log_w)):
                if calls["stop_after"] == 0:
                    raise KeyboardInterrupt
                calls["stop_after"] -= 1
                yield slice(rows.start + i, rows.start + i + 1), log_w[i:i + 1]

    monkeypatch.setattr(runner_cls, "log_weight_chunks", one_image_at_a_time)
    tiny = dict(TINY, backend=backend, epochs=1, max_train=200, max_test=6, eval_samples=30,
                out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run(ExperimentConfig(**tiny))
    saved_path = tmp_path / "checkpoints" / "vamp" / "evaluation.npz"
    saved, meta = load_checkpoint(saved_path)
    assert meta["kind"] == "evaluation" and len(saved["log_px"]) == 4
    assert np.isfinite(saved["log_px"]).all()

    calls.update(images=[], stop_after=-1)
    (record,) = run(ExperimentConfig(**dict(tiny, resume=True))).records
    assert calls["images"] == [2]  # only the images not yet evaluated
    done, _ = load_checkpoint(saved_path)
    np.testing.assert_array_equal(done["log_px"][:4], saved["log_px"])
    assert record["test_log_likelihood"] == pytest.approx(np.mean(done["log_px"]), rel=1e-12)
    assert record["num_test"] == 6

    calls.update(images=[])
    (again,) = run(ExperimentConfig(**dict(tiny, resume=True))).records
    assert calls["images"] == [] and again["test_log_likelihood"] == record["test_log_likelihood"]
    calls.update(images=[])
    run(ExperimentConfig(**dict(tiny, resume=True, eval_samples=40)))
    assert calls["images"] == [6]  # other settings: the saved results do not apply


def test_config_errors_name_the_setting_and_the_cli_names_the_flag():
    with pytest.raises(ConfigError) as error:
        ExperimentConfig(num_pseudo=0).resolve().check()
    assert str(error.value) == "num_pseudo must be a positive integer; got 0"
    assert cli.translate(error.value) == "--num-pseudo must be a positive integer; got 0"
    with pytest.raises(ConfigError) as error:
        ExperimentConfig(elbo="iwae").resolve().check()
    assert cli.translate(error.value) == ("--elbo iwae needs --num-particles k >= 2 (k = 1 is "
                                          "the ELBO); got 1")
    with pytest.raises(ConfigError) as error:
        ExperimentConfig(dataset="cifar").resolve()
    assert "dataset must be one of embedded-mnist" in str(error.value)
    # library arguments in other messages (fit's) become the flags that set them
    assert cli.translate(ValueError("Try a smaller learning_rate (now 1e+06); num_epochs 2"))\
        == "Try a smaller --lr (now 1e+06); --epochs 2"


def test_short_warmup_is_said_and_a_changed_elbo_refuses_to_resume(tmp_path):
    """A run that ends before its warm-up does warns before the work, and its record and
    table say so; --resume compares every setting fit records, elbo and num_particles
    included, by flag, before any work."""
    out = tmp_path / "run"
    proc = _cli([*TINY_FLAGS, "--warmup", "3", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("warning: --epochs 1 ends before the KL warm-up does (--warmup 3): the last epoch "
            "trains at beta = 0.33") in proc.stderr
    assert "note: vamp ended at beta = 0.33, before its KL warm-up of 3 epochs" in proc.stdout
    (record,) = json.loads((out / "metrics.json").read_text())
    assert "warmup_unfinished" in record["flags"] and record["final_beta"] == pytest.approx(1 / 3)
    before = (out / "metrics.json").read_text()

    proc = _cli([*TINY_FLAGS, "--warmup", "3", "--out", str(out), "--resume", "--elbo",
                 "meanfield", "--num-particles", "2"])
    assert proc.returncode == 2
    assert '--elbo: checkpoint "Trace_ELBO", now "TraceMeanField_ELBO"' in proc.stderr
    assert "--num-particles: checkpoint 1, now 2" in proc.stderr
    assert (out / "metrics.json").read_text() == before  # nothing trained or overwritten


def test_python_m_ppl_vae_is_the_example():
    module, script = _cli(["--help"], module=True), _cli(["--help"])
    assert module.returncode == script.returncode == 0
    # the same flags, help and defaults (only the usage line's program name and its wrapping
    # differ)
    assert module.stdout.split("\n\n", 1)[1] == script.stdout.split("\n\n", 1)[1]
    proc = _cli(["--lr", "0"], module=True)
    assert proc.returncode == 2 and "--lr must be a finite number > 0; got 0.0" in proc.stderr


def test_the_example_is_a_short_script_of_library_calls():
    text = (REPO / "examples" / "vamp_mnist.py").read_text()
    assert len(text.splitlines()) <= 300
    assert "sys.path" not in text
    for path in (*REPO.glob("benchmarks/*.py"), *REPO.glob("tests/**/*.py")):
        if path.name == Path(__file__).name:
            continue
        source = path.read_text()
        assert "sys.path.insert" not in source, path
        assert 'spec_from_file_location("vamp_mnist"' not in source, path
