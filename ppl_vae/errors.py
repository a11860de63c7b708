"""Every exception and warning of ppl_vae, defined once.

Both backends raise these same classes (``ppl_vae.pyro.TrainingDivergedError is
ppl_vae.numpyro.TrainingDivergedError is ppl_vae.errors.TrainingDivergedError``), so
``except TrainingDivergedError`` works whichever backend raised. This module imports
nothing but the standard library.

- :class:`TrainingDivergedError` -- a run stopped by a divergence rule
  (:mod:`ppl_vae._checks`);
- :class:`DistributedError` -- another rank or host of a data-parallel run was lost;
- :class:`CheckpointError`, :class:`CheckpointMismatchError` -- a checkpoint that cannot be
  read, or that was written by a run with other settings (:mod:`ppl_vae.checkpoint`);
- :class:`ConfigError` -- an :class:`~ppl_vae.experiment.ExperimentConfig` that cannot run,
  naming its settings so that a command line can name its flags instead;
- :class:`WarmupWarning` -- a run that ends before its KL warm-up does.

User errors in arguments are plain ``ValueError`` / ``TypeError`` naming the argument.
"""

__all__ = [
    "TrainingDivergedError",
    "DistributedError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ConfigError",
    "Setting",
    "WarmupWarning",
]


class TrainingDivergedError(RuntimeError):
    """Training diverged: a NaN or infinite loss or gradient at some step, a loss that
    exploded, or a validation ELBO that collapsed (the rules: :mod:`ppl_vae._checks`).

    ``.params`` holds the parameters of the last good epoch (the initial ones if none
    finished; the Pyro backend also restores them into the param store); the checkpoints on
    disk are those of the last good epoch. ``.epoch`` and ``.step`` say where it happened
    (1-based; ``.step`` None for a collapse of the validation ELBO)."""

    def __init__(self, message, params=None, epoch=None, step=None):
        super().__init__(message)
        self.params, self.epoch, self.step = params, epoch, step


class DistributedError(RuntimeError):
    """Another rank (``torch.distributed``) or host (JAX) died or stopped answering: a
    collective failed or timed out.

    ``.epoch`` and ``.step`` say where (1-based; ``.step`` None outside a step) and
    ``.checkpoint`` is the last good ``last.npz`` (None without one), which resumes on any
    number of ranks or devices."""

    def __init__(self, message, epoch=None, step=None, checkpoint=None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, truncated, corrupt or unsafe."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint written by a run with different settings than the one resuming it.

    ``.differences`` lists ``(setting, in the checkpoint, now)``."""

    def __init__(self, message, differences):
        super().__init__(message)
        self.differences = differences


class Setting(str):
    """The name of a setting inside a :class:`ConfigError` message (a ``str``)."""


class ConfigError(ValueError):
    """A setting of an experiment that cannot work, raised before any work.

    Built from parts, plain strings and :class:`Setting` names:
    ``ConfigError(Setting("num_pseudo"), " must be at most 200; got 500")``. ``str(e)`` speaks
    of the settings by their names (``num_pseudo must be ...``); :meth:`render` spells them
    another way, as a command line does with its flags (``--num-pseudo must be ...``).
    ``.settings`` lists the settings named."""

    def __init__(self, *parts):
        self.parts = parts
        self.settings = [part for part in parts if isinstance(part, Setting)]
        super().__init__(self.render())

    def render(self, spell=str):
        """The message, each setting's name passed through ``spell``."""
        return "".join(spell(part) if isinstance(part, Setting) else str(part)
                       for part in self.parts)


class WarmupWarning(UserWarning):
    """A run whose last epoch comes before its KL warm-up ends: it stops at a KL weight
    below 1, so it has not trained on the full ELBO."""
