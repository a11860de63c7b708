"""The paper's experiment as a library call: a config, then data -> build -> fit -> evaluate ->
record, for each prior, in either backend.

What ``examples/vamp_mnist.py`` and ``python -m ppl_vae`` run (their flags are the fields of
:class:`ExperimentConfig`, :mod:`ppl_vae.cli`), callable from Python::

    from ppl_vae.experiment import ExperimentConfig, run, load_run

    report = run(ExperimentConfig(prior=("standard", "vamp"), epochs=20, out="out/try"))
    print(report.table())                      # the CLI's table; report.records: metrics.json
    trained = load_run("out/try/checkpoints/vamp/best.npz")   # model, guide, prior rebuilt
    log_px = trained.log_likelihood(x_test, num_samples=5000)

:func:`run` checks everything before the first training step (the config, the data, the
device, every prior's checkpoint on ``resume``), then trains and evaluates each prior in turn
and writes to ``config.out``: ``metrics.json`` (one record per prior, rewritten after each;
the records of other priors from an earlier run of the same dataset, model and backend into
the folder are kept),
``inference_data.nc`` (ArviZ), ``elbo_curves.png``, per prior ``samples_<prior>.png``,
``reconstructions_<prior>.png`` and (VampPriors) ``pseudo_inputs_<prior>.png``, and the
checkpoints under ``checkpoints/<prior>/``. A prior whose training diverges is recorded as
such (``status`` ``"diverged"``) and the others still run. The backend-specific half (building
the networks, the backend's fit and evaluation calls) is ``ppl_vae.pyro._runner`` /
``ppl_vae.numpyro._runner``; everything else is here, once.

Errors name the config's fields (:class:`~ppl_vae.errors.ConfigError`), so that the command
line can name its flags instead.
"""

import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ppl_vae._training import DEFAULT_OPTIMIZER, check_resume, run_config, warmup_message
from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.data import (
    DATASET_NAMES,
    LIKELIHOODS,
    check_binary,
    dataset_spec,
    load_dataset,
    subset_indices,
)
from ppl_vae.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    Setting,
    TrainingDivergedError,
    WarmupWarning,
)
from ppl_vae.plotting import (
    save_elbo_curves,
    save_image_grid,
    save_is_vs_ais,
    save_latent_figure,
)

__all__ = ["ExperimentConfig", "Report", "TrainedRun", "run", "prepare", "load_run",
           "PRIORS", "MODELS", "ELBOS", "PAPER", "PRESETS", "MIN_KHAT_SAMPLES"]

#: the priors a run can train, each a separate model
PRIORS = ("standard", "mog", "vamp", "vamp-data")
MODELS = ("vae", "hvae", "convhvae", "pixelhvae")
#: the models with convolutional networks: they need the images' (H, W), ``image_shape``
CONV_MODELS = ("convhvae", "pixelhvae")
ELBOS = ("trace", "meanfield", "iwae")
#: the paper's recipe (Tomczak & Welling 2018): up to 2000 epochs, KL warm-up over 100,
#: early stopping after 50 epochs without validation improvement, 5000 importance samples
PAPER = dict(epochs=2000, warmup=100, early_stopping=50, eval_samples=5000)
#: per dataset, what fills the fields left None: every benchmark the paper's recipe, the
#: embedded offline sample a 2-minute run
PRESETS = {name: dict(PAPER) for name in DATASET_NAMES}
PRESETS["embedded-mnist"] = dict(epochs=50, warmup=10, early_stopping=10, eval_samples=1000)
#: fewer importance samples than this leave under 5 draws in the Pareto tail of the k-hat fit
MIN_KHAT_SAMPLES = 25


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run; the fields are the command line's flags (``num_pseudo`` is
    ``--num-pseudo``). Fields left None take the dataset's value (:data:`PRESETS` for
    ``epochs``, ``warmup``, ``early_stopping``, ``eval_samples``; the dataset registry for
    ``likelihood``, ``binarize`` and ``pseudo_init``): :meth:`resolve` fills them.

    :ivar str backend: ``"pyro"`` or ``"numpyro"``.
    :ivar str model: ``"vae"`` (one stochastic layer) or ``"hvae"`` (two: q(z2|x) q(z1|x,z2),
        the prior on z2, p(z1|z2) learned), ``latent_dim`` units per layer; ``"convhvae"`` and
        ``"pixelhvae"``: the HVAE with the paper's convolutional encoders and a gated
        convolutional or a PixelCNN decoder (:mod:`ppl_vae.pyro.conv`; ``hidden`` sets their
        dense layers' widths, the convolutions are the reference's).
    :ivar tuple prior: one or more of :data:`PRIORS`, each trained as a separate model.
    :ivar str dataset: a name of :data:`ppl_vae.data.DATASET_NAMES`.
    :ivar data_dir: the dataset's canonical files (or their parent); None: the download cache.
    :ivar bool download: fetch missing files (checksummed) into ``data_dir``.
    :ivar data_path: ``dataset="npz"``: your ``.npz`` of ``train``, ``valid``, ``test``.
    :ivar image_shape: ``dataset="npz"``: ``(H, W)``. The convolutional models record the
        dataset's here (:func:`load_data` fills it in), so their checkpoints rebuild them.
    :ivar binarize: ``"static"``, ``"dynamic"`` or ``"none"``.
    :ivar pseudo_init: ``(mean, std)`` of the pseudo-inputs' initialisation.
    :ivar int epochs: the most epochs; ``warmup`` KL warm-up epochs (0: none);
        ``early_stopping`` epochs without validation improvement (0: never).
    :ivar int num_pseudo: K, pseudo-inputs of the VampPrior (and components of the MoG).
    :ivar float lr: Adam's learning rate; ``normalize_gradients``: the reference's AdamNormGrad.
    :ivar str elbo: ``"trace"``, ``"meanfield"`` or ``"iwae"`` (with ``num_particles`` >= 2).
    :ivar int eval_samples: importance samples per test image; ``eval="ais"`` adds AIS
        (``ais_steps``, ``ais_chains``, ``ais_leapfrog``).
    :ivar max_train: use the first N training images; ``max_test``: a fixed random subset of N
        test images.
    :ivar int seed: initialisation, shuffling, the ELBO and importance samples (never the data).
    :ivar str out: the output directory; ``resume``: continue each prior from its checkpoint.
    :ivar int latent_gmm: fit a K-component Bayesian GMM to the latent means (0: off).
    :ivar bool distributed: data-parallel training and evaluation (docs/scaling.md).
    """

    backend: str = "pyro"
    model: str = "vae"
    prior: tuple = ("standard", "vamp")
    dataset: str = "embedded-mnist"
    data_dir: str = None
    download: bool = False
    data_path: str = None
    image_shape: tuple = None
    binarize: str = None
    pseudo_init: tuple = None
    epochs: int = None
    num_pseudo: int = 500
    latent_dim: int = 40
    hidden: tuple = (300, 300)
    gated: bool = True
    likelihood: str = None
    elbo: str = "trace"
    num_particles: int = 1
    warmup: int = None
    early_stopping: int = None
    eval_samples: int = None
    eval: str = "is"
    ais_steps: int = 1000
    ais_chains: int = 16
    ais_leapfrog: int = 5
    batch_size: int = 100
    lr: float = 5e-4
    normalize_gradients: bool = False
    max_train: int = None
    max_test: int = None
    seed: int = 0
    device: str = "cpu"
    out: str = "out/vamp_mnist"
    resume: bool = False
    latent_gmm: int = 0
    progress: bool = True
    distributed: bool = False

    def resolve(self):
        """A copy with the dataset's presets in the fields left None (``likelihood``,
        ``binarize`` and ``pseudo_init`` come from the data: :func:`prepare`)."""
        dataset = _dataset_name(self.dataset)
        presets = {k: v for k, v in PRESETS[dataset].items() if getattr(self, k) is None}
        return dataclasses.replace(
            self, dataset=dataset, prior=tuple(self.prior), hidden=tuple(self.hidden),
            **presets)

    def check(self):
        """Raise :class:`~ppl_vae.errors.ConfigError` for the first setting that cannot work,
        naming it; returns the config. Call it on a resolved config."""
        _check_choice("backend", self.backend, ("pyro", "numpyro"))
        _check_choice("model", self.model, MODELS)
        if not self.prior:
            raise ConfigError(Setting("prior"), " needs at least one of " + ", ".join(PRIORS))
        for prior in self.prior:
            _check_choice("prior", prior, PRIORS)
        _check_choice("elbo", self.elbo, ELBOS)
        _check_choice("eval", self.eval, ("is", "ais"))
        if self.likelihood is not None:
            _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        for key in ("epochs", "num_pseudo", "latent_dim", "eval_samples", "batch_size",
                    "num_particles", "ais_steps", "ais_chains", "ais_leapfrog"):
            value = getattr(self, key)
            if not _is_int(value) or value <= 0:
                raise ConfigError(Setting(key), f" must be a positive integer; got {value}")
        for key in ("warmup", "early_stopping", "max_train", "max_test", "latent_gmm"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 0):
                raise ConfigError(Setting(key), f" must be >= 0; got {value}")
        if not isinstance(self.lr, (int, float)) or not (np.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(Setting("lr"), f" must be a finite number > 0; got {self.lr}")
        if not self.hidden or any(not _is_int(h) or h <= 0 for h in self.hidden):
            raise ConfigError(Setting("hidden"), " widths must be positive integers; got "
                              + " ".join(map(str, self.hidden)))
        if _has_arviz() and self.eval_samples < MIN_KHAT_SAMPLES:
            raise ConfigError(
                Setting("eval_samples"), f" must be at least {MIN_KHAT_SAMPLES}: the Pareto "
                "k-hat of each test image fits the largest S/5 of its S importance weights; "
                f"got {self.eval_samples}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(Setting("device"), f" must be cpu, cuda or cuda:N; got "
                              f"{self.device!r}")
        if self.elbo == "iwae" and self.num_particles < 2:
            raise ConfigError(Setting("elbo"), " iwae needs ", Setting("num_particles"),
                              f" k >= 2 (k = 1 is the ELBO); got {self.num_particles}")
        if self.eval == "ais" and self.distributed:
            raise ConfigError(Setting("eval"), " ais runs on one device; it does not combine "
                              "with ", Setting("distributed"))
        if self.data_path is not None and self.dataset != "npz":
            raise ConfigError(Setting("data_path"), " is for ", Setting("dataset"), " npz; ",
                              Setting("dataset"), f" {self.dataset} reads its files from ",
                              Setting("data_dir"))
        if self.pseudo_init is not None and self.pseudo_init[1] < 0:
            raise ConfigError(Setting("pseudo_init"), f" STD must be >= 0; got "
                              f"{self.pseudo_init[1]}")
        return self


_FIELDS = frozenset(f.name for f in dataclasses.fields(ExperimentConfig))


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_choice(key, value, choices):
    if value not in choices:
        raise ConfigError(Setting(key), f" must be one of {', '.join(choices)}; got {value!r}")


def _dataset_name(name):
    """The registry's name for an alias ('embedded'), else as given."""
    try:
        return dataset_spec(name).name
    except ValueError:
        raise ConfigError(Setting("dataset"), f" must be one of {', '.join(DATASET_NAMES)}; "
                          f"got {name!r}") from None


def _has_arviz():
    try:
        return importlib.util.find_spec("arviz") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


def _runner(config):
    """The backend's half of the runner (``ppl_vae.<backend>._runner.Runner``)."""
    return importlib.import_module(f"ppl_vae.{config.backend}._runner").Runner(config)


# ------------------------------------------------------------------------------------ data
class Data(NamedTuple):
    """The splits a run trains, validates and tests on (after ``max_train`` / ``max_test``)
    and the dataset they came from (its labels subset with them)."""

    dataset: object
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def load_data(config):
    """Load ``config.dataset``; return ``(config, data)`` with the fields the dataset decides
    filled in (``likelihood``, ``pseudo_init``), every mismatch raised before any training."""
    try:
        # The data's own seed (ppl_vae.data.DATA_SEED), not config.seed: every run, whatever
        # its seed, trains and evaluates on the same splits and the same binary images.
        dataset = load_dataset(config.dataset, data_dir=config.data_dir,
                               download=config.download, binarization=config.binarize,
                               data_path=config.data_path, image_shape=config.image_shape)
    except (OSError, ValueError) as e:  # missing or malformed files: say what and where
        raise ConfigError(str(e)) from None
    config = dataclasses.replace(
        config, likelihood=config.likelihood or dataset.likelihood,
        pseudo_init=tuple(config.pseudo_init or dataset.pseudo_init))
    if config.model in CONV_MODELS:  # the networks' image shape, kept in the checkpoint
        config = dataclasses.replace(config, image_shape=tuple(dataset.image_shape))
    if config.likelihood == "bernoulli" and dataset.input_type != "binary":
        raise ConfigError(
            Setting("likelihood"), " bernoulli needs binary images, and "
            f"{config.dataset} is grey here (binarization {dataset.binarization!r}); use ",
            Setting("likelihood"), " discretized_logistic, or ", Setting("binarize"),
            " static or dynamic")
    train, valid, test = dataset.train, dataset.valid, dataset.test
    if config.max_train:
        train = train[:config.max_train]
    if config.max_test:  # a uniform subset; the training files are shuffled, first N is one
        idx = subset_indices(len(test), config.max_test)
        test = test[idx]
        dataset = dataclasses.replace(dataset, test=test, test_labels=None
                                      if dataset.test_labels is None
                                      else dataset.test_labels[idx])
    if config.likelihood == "bernoulli":
        checked = (("valid", valid), ("test", test))
        if not dataset.dynamic_binarization:  # dynamic: grey images, binarised by fit()
            checked = (("train", train), *checked)
        try:
            for name, x in checked:
                check_binary(x, f"{config.dataset} {name} data")
        except ValueError as e:
            raise ConfigError(f"{e}; use ", Setting("likelihood"),
                              " discretized_logistic") from None
    return config, Data(dataset, train, valid, test)


# ------------------------------------------------------------------------- the whole run
CONFIG_KEYS = ("model", "dataset", "num_pseudo", "latent_dim", "hidden", "gated",
               "likelihood", "binarize", "pseudo_init", "max_train", "seed", "data_path",
               "image_shape")


class Experiment:
    """A prepared run: the config (resolved, checked), the data and the backend's runner.
    :func:`prepare` makes one; :meth:`run_prior` trains and evaluates one prior and
    :meth:`finish` writes the files that cover all of them. :func:`run` does the three."""

    def __init__(self, config, data, runner, is_main, num_shards, notify=None):
        self.config, self.data, self.runner = config, data, runner
        self.notify = notify or _to_stderr  # warnings and divergences, as they happen
        self.is_main, self.num_shards = is_main, num_shards  # rank 0 alone prints and writes
        self.out = Path(config.out)
        self.records, self.histories, self.idata, self.diverged = [], {}, {}, []

    # ------------------------------------------------------------------ per prior
    def fit_settings(self, prior_name):
        """The keyword arguments of the backend's ``fit`` for ``prior_name``."""
        c = self.config
        return dict(
            num_epochs=c.epochs, batch_size=c.batch_size, learning_rate=c.lr,
            elbo=self.runner.elbo(), warmup_epochs=c.warmup,
            early_stopping=c.early_stopping or None,
            checkpoint_dir=self.checkpoint_dir(prior_name), resume=c.resume,
            progress=c.progress, description=f"{c.backend}/{prior_name}",
            config={"prior": prior_name, **{k: _plain(getattr(c, k)) for k in CONFIG_KEYS}},
            dynamic_binarization=self.data.dataset.dynamic_binarization,
            normalize_gradients=c.normalize_gradients)

    def run_config(self, prior_name):
        """The configuration ``fit`` will store and compare for ``prior_name`` (built by the
        same function as fit's, :func:`ppl_vae._training.run_config`)."""
        s, train = self.fit_settings(prior_name), self.data.train
        return run_config(
            self.runner.backend, elbo=s["elbo"], seed=self.runner.seed_record,
            batch_size=s["batch_size"], warmup_epochs=s["warmup_epochs"],
            num_train=len(train), num_valid=len(self.data.valid),
            num_features=train.shape[1], dynamic_binarization=s["dynamic_binarization"],
            num_epochs=s["num_epochs"], early_stopping=s["early_stopping"],
            learning_rate=float(s["learning_rate"]),
            normalize_gradients=s["normalize_gradients"], optimizer=DEFAULT_OPTIMIZER,
            config=s["config"])

    def checkpoint_dir(self, prior_name):
        return self.out / "checkpoints" / prior_name

    def run_prior(self, prior_name):
        """Train, evaluate and draw one prior's model; append its record (``status`` ``ok``,
        or ``diverged`` with the error) and rewrite ``metrics.json``."""
        c, data = self.config, self.data
        record = self._base_record(prior_name)
        try:
            outputs = self._train_and_evaluate(prior_name)
        except TrainingDivergedError as e:
            record.update(status="diverged", error=str(e), diverged_epoch=e.epoch,
                          diverged_step=e.step)
            self.diverged.append(prior_name)
            self.records.append(record)
            if self.is_main:
                self._write_metrics()
            raise
        if not self.is_main:
            return None  # the other ranks trained and evaluated with rank 0; it reports
        history, log_px, khat = outputs["history"], outputs["log_px"], outputs["khat"]
        self.histories[prior_name] = history
        test_ll = float(np.mean(log_px))
        flags = []
        uniform = uniform_log_likelihood(c.likelihood, data.train.shape[1])
        if test_ll < uniform:
            flags.append("worse_than_uniform")  # untrained, or something broke
            self.notify(f"warning: {prior_name}: the test log-likelihood {test_ll:.2f} is "
                        f"below a uniform model's ({uniform:.2f}): the model has learned "
                        "nothing usable yet, or training went wrong")
        if not _has_arviz():
            flags.append("no_khat_without_arviz")
        final_beta = history[-1]["beta"] if history else None
        if final_beta is not None and final_beta < 1.0:
            flags.append("warmup_unfinished")  # it never trained on the full ELBO
        best = self.checkpoint_dir(prior_name) / "best.npz"
        record.update(
            status="ok", flags=flags, epochs=len(history), best_epoch=outputs["best_epoch"],
            stopped_early=outputs["stopped_early"],
            best_valid_elbo=outputs["best_valid_elbo"], test_elbo=outputs["test_elbo"],
            test_log_likelihood=test_ll,
            test_log_likelihood_sem=float(np.std(log_px, ddof=1) / np.sqrt(len(log_px)))
            if len(log_px) > 1 else None,
            # share of test images whose estimate is unreliable (k-hat > 0.7, or too few
            # samples to fit a tail: inf); None without ArviZ
            khat_above_0_7=None if np.isnan(khat).any() else float(np.mean(~(khat <= 0.7))),
            active_units=outputs["active_units"], final_beta=final_beta,
            train_seconds=outputs["train_seconds"], eval_seconds=outputs["eval_seconds"],
            # the parameters evaluated: the best epoch's, as saved in this file
            checkpoint={"path": str(best), "epoch": outputs["best_epoch"]}
            if best.exists() else None,
            fit_config=outputs["config"],
        )
        ais = outputs.get("ais")
        if ais is not None:  # eval="ais": the same test images by AIS
            record.update(
                test_log_likelihood_ais=float(np.mean(ais.log_likelihood)),
                test_log_likelihood_ais_sem=float(np.std(ais.log_likelihood, ddof=1)
                                                  / np.sqrt(len(log_px)))
                if len(log_px) > 1 else None,
                ais_minus_is=float(np.mean(ais.log_likelihood - log_px)),
                ais_chain_stderr=float(np.mean(ais.stderr)),
                ais_acceptance=float(np.mean(ais.acceptance)), ais_steps=c.ais_steps,
                ais_chains=c.ais_chains, ais_leapfrog=c.ais_leapfrog,
                ais_seconds=outputs["ais_seconds"])
            save_is_vs_ais(self.out / f"is_vs_ais_{prior_name}.png", log_px, ais.log_likelihood,
                           khat, f"{prior_name}: IS ({c.eval_samples}) vs AIS ({c.ais_steps} "
                           f"steps x {c.ais_chains} chains)")
        self._save_images(prior_name, outputs)
        if c.latent_gmm:
            record.update(self._latent_gmm(prior_name, outputs))
        self.records.append(record)
        self._write_metrics()  # rewritten after each prior: nothing lost
        if _has_arviz():
            from ppl_vae import diagnostics

            self.idata[prior_name] = diagnostics.vae_inference_data(
                log_px, khat, history, num_samples=c.eval_samples,
                attrs=dict(prior=prior_name, model=c.model, backend=c.backend,
                           dataset=c.dataset, likelihood=c.likelihood,
                           eval_samples=c.eval_samples))
            if ais is not None:
                diagnostics.add_ais(self.idata[prior_name], ais, dict(
                    num_steps=c.ais_steps, num_leapfrog=c.ais_leapfrog, start="guide",
                    schedule="sigmoid"))
        return record

    def _train_and_evaluate(self, prior_name):
        c, data, runner = self.config, self.data, self.runner
        built = runner.build(prior_name, data.train.shape[1], data.train)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # said once, before any work, by check_budget (the CLI) or the caller
            warnings.simplefilter("ignore", WarmupWarning)
            result = runner.fit(built, data.train, data.valid, **self.fit_settings(prior_name))
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        test_elbo = runner.test_elbo(built, result, data.test)
        if c.distributed:  # this rank's chunks, then every image's result on every rank
            chunks = runner.log_weight_chunks(built, result, data.test)
            parts = [(rows, summarise_log_weights([(rows, log_w)])) for rows, log_w in chunks]
            log_px, khat = (runner.gather_rows([(rows, part[k]) for rows, part in parts],
                                               len(data.test)) for k in (0, 1))
        else:  # saved as it goes: an interrupted evaluation continues on resume
            log_px, khat = self._log_likelihoods(prior_name, built, result)
        eval_seconds = time.perf_counter() - t0
        ais = ais_seconds = None
        if c.eval == "ais":  # AIS from the guide on the same test images
            t0 = time.perf_counter()
            ais = runner.ais(built, result, data.test)
            ais_seconds = time.perf_counter() - t0
        figures = runner.figures(built, result, data.train, data.test)
        if figures["pseudo_inputs"] is not None:
            figures["pseudo_inputs"] = figures["pseudo_inputs"][:100]
        return dict(figures, history=result.history, best_epoch=result.best_epoch,
                    config=result.config, best_valid_elbo=result.best_valid_elbo,
                    stopped_early=result.stopped_early,
                    active_units=_active_units(figures["layers"]), test_elbo=test_elbo,
                    log_px=log_px, khat=khat, ais=ais, ais_seconds=ais_seconds,
                    train_seconds=train_seconds, eval_seconds=eval_seconds)

    def _evaluation_identity(self, prior_name):
        """What the saved per-image results depend on: the evaluated parameters (the bytes of
        ``best.npz``), the test images, the number of samples, the backend and seed."""
        import hashlib

        best = self.checkpoint_dir(prior_name) / "best.npz"
        if not best.exists():
            return None
        return dict(best_sha256=hashlib.sha256(best.read_bytes()).hexdigest(),
                    test_sha256=hashlib.sha256(np.ascontiguousarray(self.data.test)).hexdigest(),
                    num_test=len(self.data.test), eval_samples=self.config.eval_samples,
                    backend=self.config.backend, seed=self.config.seed)

    def _log_likelihoods(self, prior_name, built, result, every=30.0):
        """Per-image log p(x) and k-hat of the test images (:func:`summarise_log_weights`),
        saved as they come to ``checkpoints/<prior>/evaluation.npz`` (at most every ``every``
        seconds, at the end and when interrupted; atomically, as the checkpoints). With
        ``resume``, the images an interrupted evaluation of the same parameters, test images
        and samples saved are kept and only the rest are evaluated (with fresh random draws:
        the estimate is as good, not the same bits)."""
        from ppl_vae.checkpoint import save_checkpoint

        path, test = self.checkpoint_dir(prior_name) / "evaluation.npz", self.data.test
        identity = self._evaluation_identity(prior_name)
        parts = [(np.zeros(0), np.zeros(0))]
        if self.config.resume and identity is not None and path.exists():
            try:
                arrays, meta = load_checkpoint(path)
            except CheckpointError:
                arrays, meta = {}, {}
            if meta.get("identity") == identity and len(arrays["log_px"]):
                parts = [(arrays["log_px"], arrays["khat"])]
                self.notify(f"{prior_name}: {len(arrays['log_px'])} of {len(test)} test images "
                            f"were evaluated before ({path}); evaluating the rest")

        def save():
            if identity is not None:
                save_checkpoint(path, {"log_px": np.concatenate([p[0] for p in parts]),
                                       "khat": np.concatenate([p[1] for p in parts])},
                                {"kind": "evaluation", "identity": identity})

        done, last = len(parts[0][0]), time.perf_counter()
        try:
            if done < len(test):
                for chunk in self.runner.log_weight_chunks(built, result, test[done:]):
                    parts.append(summarise_log_weights([chunk]))
                    if time.perf_counter() - last > every:
                        save()
                        last = time.perf_counter()
        finally:  # done, or interrupted (Ctrl-C, an error): what was evaluated is kept
            save()
        return tuple(np.concatenate([p[i] for p in parts]) for i in (0, 1))

    def _base_record(self, prior_name):
        """The settings that shaped a prior's result, whatever its outcome."""
        c, dataset = self.config, self.data.dataset
        settings = dict(dataclasses.asdict(c), dynamic_binarization=dataset.dynamic_binarization,
                        is_main=self.is_main, num_shards=self.num_shards)
        return dict(
            prior=prior_name, model=c.model, backend=c.backend, dataset=c.dataset,
            likelihood=c.likelihood, binarization=dataset.binarization,
            input_type=dataset.input_type, pseudo_init=list(c.pseudo_init),
            image_shape=list(dataset.image_shape), num_pseudo=c.num_pseudo,
            latent_dim=c.latent_dim, hidden=list(c.hidden), gated=c.gated, elbo=c.elbo,
            learning_rate=c.lr, normalize_gradients=c.normalize_gradients,
            batch_size=c.batch_size, warmup=c.warmup, early_stopping=c.early_stopping,
            max_epochs=c.epochs, seed=c.seed, num_train=len(self.data.train),
            num_test=len(self.data.test), eval_samples=c.eval_samples, device=c.device,
            resumed=bool(c.resume), checkpoint_dir=str(self.checkpoint_dir(prior_name)),
            settings=_plain(settings), environment=environment())

    def _save_images(self, prior_name, outputs):
        c, shape = self.config, self.data.dataset.image_shape
        # grey photographs (faces, tissue) as they are; binary strokes black on white
        cmap = "gray" if c.likelihood == "discretized_logistic" else "gray_r"
        save_image_grid(self.out / f"samples_{prior_name}.png", outputs["samples"],
                        f"{prior_name} prior: p(x|z) means, z ~ p(z)", shape, cmap=cmap)
        save_image_grid(self.out / f"reconstructions_{prior_name}.png",
                        np.concatenate([self.data.test[:10], outputs["reconstructions"]]),
                        f"{prior_name}: test images (top) and reconstructions", shape,
                        cmap=cmap)
        if outputs["pseudo_inputs"] is not None:
            save_image_grid(self.out / f"pseudo_inputs_{prior_name}.png",
                            outputs["pseudo_inputs"], f"{prior_name}: learned pseudo-inputs",
                            shape, cmap=cmap)

    def _latent_gmm(self, prior_name, outputs):
        """Bayesian GMM (variational EM) on the training images' latent means; clusters of
        the test images against their labels, beside the prior's own mixture components."""
        from sklearn.metrics import adjusted_rand_score

        from ppl_vae.mixture import BayesianGaussianMixture

        c = self.config
        gmm = BayesianGaussianMixture(
            n_components=c.latent_gmm, weight_concentration_prior_type="dirichlet_distribution",
            max_iter=300, random_state=c.seed).fit(outputs["train_codes"])
        clusters = gmm.predict(outputs["test_codes"])
        labels = self.data.dataset.test_labels  # subset with the test images by load_data
        ari = None if labels is None else float(adjusted_rand_score(labels, clusters))
        save_latent_figure(self.out / f"latent_gmm_{prior_name}.png", outputs["test_codes"],
                           clusters, labels, outputs["prior_locs"], gmm.means_,
                           title=f"{prior_name} prior: latent means")
        return dict(latent_gmm_ari=ari, latent_gmm_elbo=float(gmm.lower_bound_),
                    latent_gmm_components=int(np.sum(gmm.weights_ > 1e-2)))

    def _write_metrics(self):
        """Write this run's records to ``metrics.json``, after the records of other priors
        that an earlier run of the same dataset, model and backend left there (a prior run on
        its own into the folder adds to the file; a prior run again replaces its record)."""
        path, c = self.out / "metrics.json", self.config
        mine = {r["prior"] for r in self.records}
        kept = [r for r in _earlier_records(path) if r.get("prior") not in mine
                and (r.get("dataset"), r.get("model"), r.get("backend"))
                == (c.dataset, c.model, c.backend)]
        with open(path, "w") as f:
            json.dump(kept + self.records, f, indent=2, default=str)

    # ------------------------------------------------------------------ all priors
    def finish(self):
        """Write what covers every prior: ``inference_data.nc`` and ``elbo_curves.png``."""
        if not self.is_main:
            return
        if self.idata:
            from ppl_vae import diagnostics

            diagnostics.save_runs(self.idata, self.out / "inference_data.nc")
        if self.histories:
            c = self.config
            save_elbo_curves(self.out / "elbo_curves.png", self.histories,
                             f"{c.dataset}, {c.backend}: ELBO per epoch")

    def report(self):
        return Report(self.config, self.records, tuple(self.diverged), self.out, self.is_main)


def _plain(value):
    """Tuples as lists, as JSON stores them (so a checkpoint's config compares equal)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _to_stderr(message):
    print(message, file=sys.stderr)


def prepare(config, notify=None):
    """Resolve and check ``config``, join the other ranks (``distributed``), load the data and
    check everything that could fail after training, every prior's checkpoint included on
    ``resume``: all before the first step. Returns an :class:`Experiment`.

    :param notify: called with each warning and divergence message as it happens (default:
        print to stderr).

    :raises ~ppl_vae.errors.ConfigError: a setting, file or checkpoint that cannot work.
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig; got {type(config).__name__}.")
    config = config.resolve().check()
    is_main, num_shards = _join_ranks(config)  # first: JAX joins hosts before computing
    Path(config.out).mkdir(parents=True, exist_ok=True)
    config, data = load_data(config)
    for split, x in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if len(x) == 0:
            raise ConfigError(f"the {split} split of ", Setting("dataset"), f" {config.dataset} "
                              "is empty; every split needs at least one image")
    if config.latent_gmm > len(data.train):
        raise ConfigError(Setting("latent_gmm"), " must be at most the number of training "
                          f"images ({len(data.train)}); got {config.latent_gmm}")
    if "vamp-data" in config.prior and config.num_pseudo > len(data.train):
        raise ConfigError(Setting("num_pseudo"), " must be at most the number of training "
                          f"images ({len(data.train)}) for ", Setting("prior"),
                          f" vamp-data; got {config.num_pseudo}")
    if config.backend == "numpyro" and config.device.startswith("cuda"):
        import jax

        try:
            jax.devices("gpu")
        except RuntimeError:
            raise ConfigError(Setting("device"), f" {config.device}: no JAX GPU on this "
                              "machine") from None
    experiment = Experiment(config, data, _runner(config), is_main, num_shards, notify)
    if config.warmup > config.epochs:
        experiment.notify(f"warning: {warmup_message(config.epochs, config.warmup)}")
    if not _has_arviz():
        experiment.notify("warning: ArviZ is not installed, so there is no Pareto k-hat and "
                          "no inference_data.nc (pip install 'ppl_vae[diagnostics]')")
    if config.resume:  # every prior's checkpoint, before the first one trains
        for prior_name in config.prior:
            try:
                check_resume(experiment.checkpoint_dir(prior_name), config.backend,
                             experiment.run_config(prior_name))
            except CheckpointMismatchError as e:
                raise _resume_refused(experiment.checkpoint_dir(prior_name) / "last.npz",
                                      e.differences) from None
    return experiment


# fit's names in a checkpoint's configuration for the config's fields they come from
_FIT_SETTINGS = {"warmup_epochs": "warmup", "num_epochs": "epochs", "learning_rate": "lr",
                 "rng_key": "seed", "dynamic_binarization": "binarize"}


def _setting(key):
    """A checkpoint configuration's key as the config field it comes from (a Setting), or as
    itself where no field sets it directly (``num_train``, ``num_features``, ...)."""
    field = _FIT_SETTINGS.get(key, key)
    return Setting(field) if field in _FIELDS else key


def _resume_refused(path, differences):
    """The ConfigError of a refused resume: every differing setting by its config field."""
    parts = [f"{path} was written by a run with other settings: "]
    for i, (key, old, new) in enumerate(differences):
        parts += ["; " if i else "", _setting(key),
                  f": checkpoint {json.dumps(old)}, now {json.dumps(new)}"]
    parts += [". Resume with the checkpoint's settings, or start a new run with another ",
              Setting("out"), ". Only ", Setting("epochs"), ", ", Setting("early_stopping"),
              " and ", Setting("lr"), " may change on resume."]
    return ConfigError(Setting("resume"), ": ", *parts)


def _join_ranks(config):
    """``distributed``: join the process group (pyro: torchrun's environment) or the other
    hosts (numpyro: the JAX coordinator variables); returns ``(is_main, num_shards)``."""
    if not config.distributed:
        return True, 1
    distributed = importlib.import_module(f"ppl_vae.{config.backend}.distributed")
    try:
        if config.backend == "pyro":
            distributed.initialize(config.device)
        else:
            distributed.initialize()
    except RuntimeError as e:
        raise ConfigError(Setting("distributed"), f": {e}") from None
    return distributed.is_main_process(), distributed.num_shards()


class Report(NamedTuple):
    """What :func:`run` returns: the config it ran (resolved), one record per prior (as in
    ``metrics.json``), the priors whose training diverged, and the output directory."""

    config: ExperimentConfig
    records: list
    diverged: tuple
    out: Path
    is_main: bool = True  # rank 0 (distributed): the one that printed and wrote

    def table(self):
        """The results as the markdown table the CLI prints."""
        return results_table(self.config, self.records)


def run(config, notify=None):
    """Run the experiment ``config`` describes (see the module's docstring); returns a
    :class:`Report`. A prior whose training diverged is in ``report.diverged`` (its record
    says ``diverged``) and the others still run.

    :param notify: called with each warning and divergence message as it happens (default:
        print to stderr).

    :raises ~ppl_vae.errors.ConfigError: before any work, for a setting, file or checkpoint
        that cannot work.
    :raises ~ppl_vae.errors.DistributedError: another rank or host was lost (its last good
        checkpoint is kept).
    """
    experiment = prepare(config, notify)
    config = experiment.config
    if experiment.is_main:
        print(f"{config.dataset}: train {experiment.data.train.shape}, valid "
              f"{experiment.data.valid.shape}, test {experiment.data.test.shape}; "
              f"{config.model}, backend {config.backend}, priors {', '.join(config.prior)}, "
              f"up to {config.epochs} epochs, {config.eval_samples} importance samples per "
              "test image" + (f"; data-parallel over {experiment.num_shards}"
                              if config.distributed else ""))
    for prior_name in config.prior:
        try:
            experiment.run_prior(prior_name)
        except TrainingDivergedError as e:
            if experiment.is_main:
                experiment.notify(f"\n{prior_name}: {e}")
    experiment.finish()
    return experiment.report()


# -------------------------------------------------------------------------------- output
def summarise_log_weights(chunks):
    """Stream ``(rows, (n, S) log-weights)`` chunks into per-image log p(x) and Pareto k-hat
    (NaN without ArviZ)."""
    from scipy.special import logsumexp

    psis_khat = None
    if _has_arviz():
        from ppl_vae.diagnostics import psis_khat
    log_px, khat = [], []
    for _, log_w in chunks:
        log_w = np.asarray(log_w, dtype=np.float64)
        log_px.append(logsumexp(log_w, axis=1) - np.log(log_w.shape[1]))
        khat.append(psis_khat(log_w) if psis_khat is not None
                    else np.full(len(log_w), np.nan))
    return np.concatenate(log_px), np.concatenate(khat)


def _active_units(layers):
    """Active units per latent layer (Burda et al. 2016: Cov_x(E_q[z_d|x]) > 0.01); an int for
    the one-layer VAE, ``{"z1": n1, "z2": n2}`` for the HVAE."""
    from ppl_vae.metrics import active_units

    counts = {name: active_units(means) for name, means in layers.items()}
    return counts["z"] if list(counts) == ["z"] else counts


def uniform_log_likelihood(likelihood, num_features):
    """log p(x) of the uniform model of the same data: a trained model below it is broken."""
    return -num_features * (np.log(2.0) if likelihood == "bernoulli" else np.log(256.0))


def environment():
    """Package versions and the machine, for metrics.json."""
    import importlib.metadata as md

    versions = {}
    for name in ("ppl_vae", "numpy", "scipy", "torch", "pyro-ppl", "jax", "jaxlib", "numpyro",
                 "equinox", "optax", "arviz", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "versions": versions}


def results_table(config, records):
    """The markdown table of ``records`` (what the CLI prints), with the latent GMM's lines
    and a note for every run that ended before its KL warm-up did."""
    ais = (f" AIS ({config.ais_steps} steps x {config.ais_chains} chains) | AIS - IS | AIS s |"
           if config.eval == "ais" else "")
    lines = [f"| prior | test ELBO | test log-likelihood ({config.eval_samples} IS) "
             f"| k-hat > 0.7 | active units | epochs | train s | eval s |{ais}",
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if ais else "")]
    for r in records:
        if r["status"] != "ok":
            lines.append(f"| {r['prior']} | diverged in epoch {r['diverged_epoch']} | - | - | "
                         "- | - | - | - |")
            continue
        share = "n/a" if r["khat_above_0_7"] is None else f"{100 * r['khat_above_0_7']:.1f}%"
        au = r["active_units"]
        au = ", ".join(f"{k} {v}" for k, v in au.items()) if isinstance(au, dict) else au
        sem = ("" if r["test_log_likelihood_sem"] is None
               else f" ± {r['test_log_likelihood_sem']:.2f}")
        ais_row = ""
        if "test_log_likelihood_ais" in r:
            ais_sem = ("" if r["test_log_likelihood_ais_sem"] is None
                       else f" ± {r['test_log_likelihood_ais_sem']:.2f}")
            ais_row = (f" {r['test_log_likelihood_ais']:.2f}{ais_sem} | "
                       f"{r['ais_minus_is']:+.2f} | {r['ais_seconds']:.0f} |")
        lines.append(f"| {r['prior']} | {r['test_elbo']:.2f} | {r['test_log_likelihood']:.2f}"
                     f"{sem} | {share} | {au} | {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['eval_seconds']:.0f} |{ais_row}")
    for r in records:
        if r["status"] == "ok" and "warmup_unfinished" in r["flags"]:
            lines.append(f"\nnote: {r['prior']} ended at beta = {r['final_beta']:.2f}, before "
                         f"its KL warm-up of {r['warmup']} epochs did: it never trained on "
                         "the full ELBO")
    if config.latent_gmm:
        lines.append(f"\nBayesian GMM on the latent means (K = {config.latent_gmm}):")
        for r in records:
            if r["status"] != "ok":
                continue
            ari = r.get("latent_gmm_ari")
            lines.append(f"  {r['prior']}: {r['latent_gmm_components']} components used"
                         + ("" if ari is None
                            else f", adjusted Rand index vs digit labels {ari:.3f}"))
    return "\n".join(lines)


# ---------------------------------------------------------------------- a trained run back
class TrainedRun(NamedTuple):
    """A run rebuilt from its checkpoint by :func:`load_run`: the model/guide pair with the
    checkpoint's parameters (Pyro: in the param store and the networks; NumPyro: ``params``),
    the prior and the networks, the configuration it was trained with and the checkpoint's
    metadata."""

    config: ExperimentConfig
    prior_name: str
    model: object
    guide: object
    prior: object
    networks: dict
    params: dict
    meta: dict

    def log_likelihood(self, data, num_samples=5000, seed=0):
        """Importance-sampled log p(x) per row of ``data`` ``(N, D)``, a NumPy array."""
        if self.config.backend == "pyro":
            import torch

            import ppl_vae.pyro as pv

            torch.manual_seed(seed)
            return pv.importance_log_likelihood(self.model, self.guide, data,
                                                num_samples=num_samples)
        from jax import random

        import ppl_vae.numpyro as nv

        return nv.importance_log_likelihood(random.PRNGKey(seed), self.model, self.guide,
                                            data, num_samples=num_samples, params=self.params)


def _earlier_records(path):
    """The records of an existing ``metrics.json`` (JSON only), or ``[]`` when there is none
    or it is not a list of records (a file of another program is replaced, never trusted)."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    ok = isinstance(records, list) and all(isinstance(r, dict) for r in records)
    return records if ok else []


def load_run(path):
    """Rebuild a trained run from its checkpoint (``best.npz`` or ``last.npz`` written by
    :func:`run`, ``examples/vamp_mnist.py`` or ``python -m ppl_vae``): the networks, the prior
    and the model/guide pair are built from the configuration recorded in the checkpoint and
    get its parameters. Nothing is unpickled: the checkpoint holds arrays and JSON.

    :returns: a :class:`TrainedRun`.
    :raises ~ppl_vae.errors.CheckpointError: unreadable, or not a run of this module.
    """
    _, meta = load_checkpoint(path)
    saved = meta.get("config", {})
    missing = [k for k in ("backend", "prior", "model", "num_features", *CONFIG_KEYS)
               if k not in saved]
    if missing:
        raise CheckpointError(f"{path} was not written by ppl_vae.experiment (its "
                              f"configuration lacks {', '.join(missing)}): rebuild its model "
                              "and guide yourself and use the backend's load_params.")
    fields = {k: saved[k] for k in CONFIG_KEYS if k not in ("max_train",)}
    fields["hidden"] = tuple(fields["hidden"])
    fields["pseudo_init"] = tuple(fields["pseudo_init"])
    config = ExperimentConfig(backend=saved["backend"], prior=(saved["prior"],),
                              elbo=_ELBO_FIELD.get(saved.get("elbo"), "trace"),
                              num_particles=saved.get("num_particles", 1), **fields)
    runner = _runner(config)
    built = runner.build(saved["prior"], saved["num_features"])
    loaded = runner.load(built, path, saved["num_features"])
    params, meta = loaded if config.backend == "numpyro" else (None, loaded)
    return TrainedRun(config, saved["prior"], built.model, built.guide, built.prior,
                      built.networks, params, meta)


_ELBO_FIELD = {"Trace_ELBO": "trace", "TraceMeanField_ELBO": "meanfield", "RenyiELBO": "iwae"}
