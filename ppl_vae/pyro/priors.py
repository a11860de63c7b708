"""Priors p(z) as objects handed to a model.

A prior is a ``torch.nn.Module`` whose call registers its parameters with Pyro (by name) and
returns a distribution with event shape ``(L,)``:

- :class:`StandardNormalPrior` -- ``N(0, I)``;
- :class:`MixtureOfGaussiansPrior` -- a mixture with learned weights, locations and scales
  (a :class:`DiagonalNormalMixture`);
- :class:`LearnedVampPrior` -- the VampPrior with K learned pseudo-inputs, initialised as the
  reference does (``N(0.05, 0.01)``, kept in [0, 1] by a hardtanh), registered as
  ``"pseudo_inputs"``, its encoder under the guide's name for it (``"encoder"`` by default);
- :func:`vamp_data_prior` -- the VampPrior-data: pseudo-inputs initialised from K training
  images plus ``N(0, 0.01)`` noise, still trainable.

During evaluation the prior is fixed, so :func:`prior_cache` lets each prior build its
distribution once (for the VampPrior: encode the K pseudo-inputs once, not per chunk).
"""

import contextlib

import pyro
import torch
from pyro.distributions import Categorical, MixtureSameFamily, Normal
from torch import nn

from ppl_vae._checks import check_int
from ppl_vae.pyro._mixture_math import diag_normal_mixture_log_prob
from ppl_vae.pyro._numerics import flush_negligible_grad
from ppl_vae.pyro.vamp_prior import vamp_prior

__all__ = [
    "Prior",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "LearnedVampPrior",
    "vamp_data_prior",
    "prior_cache",
]

_CACHE = None  # dict id(prior) -> distribution while prior_cache() is active


@contextlib.contextmanager
def prior_cache():
    """Within this context every :class:`Prior` builds its distribution once.

    Only valid while parameters do not change (evaluation); gradients are not tracked.
    """
    with _cached_priors({} if _CACHE is None else _CACHE):
        yield


@contextlib.contextmanager
def _cached_priors(entries):
    """Private: make ``entries`` (a dict ``id(prior) -> distribution``, filled as priors are
    built) the active cache, gradients off. The caller owns the dict, so a generator can
    re-enter it chunk by chunk instead of holding the context (and no-grad mode, which is
    global state) across a ``yield``."""
    global _CACHE
    outer = _CACHE
    _CACHE = entries
    try:
        with torch.no_grad():
            yield entries
    finally:
        _CACHE = outer


class Prior(nn.Module):
    """Base class: ``prior()`` registers parameters with Pyro and returns p(z).

    Subclasses implement :meth:`register` (``pyro.module`` calls) and :meth:`build`
    (the distribution, event shape ``(latent_dim,)``).
    """

    latent_dim: int

    def register(self):
        pass

    def build(self):
        raise NotImplementedError

    def forward(self):
        if _CACHE is not None and id(self) in _CACHE:
            return _CACHE[id(self)]
        self.register()
        d = self.build()
        if _CACHE is not None:
            _CACHE[id(self)] = d
        return d


class StandardNormalPrior(Prior):
    """:math:`p(z) = N(0, I_L)`. ``TraceMeanField_ELBO`` uses the analytic KL with it."""

    def __init__(self, latent_dim=40):
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))

    def build(self):
        return Normal(self.loc, torch.ones_like(self.loc)).to_event(1)


class DiagonalNormalMixture(MixtureSameFamily):
    """Pyro's ``MixtureSameFamily`` of diagonal Normals with the VampPrior's log-density: one
    matrix product instead of the ``(N, K, L)`` broadcast (which makes a 5000-sample
    evaluation of a K = 500 mixture prior hours long).

    :param logits: mixture logits, shape ``(K,)``.
    :param loc: component means, shape ``(K, L)``.
    :param scale: component standard deviations, shape ``(K, L)``.
    """

    def __init__(self, logits, loc, scale, validate_args=None):
        # The (K,)/(K, L) parameters: expand() broadcasts the parent's copies, not these.
        self._component_params = (logits, loc, scale)
        super().__init__(Categorical(logits=logits), Normal(loc, scale).to_event(1),
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._component_params = self._component_params
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        # Subnormal gradients of far-away components become zeros (see ppl_vae.pyro._numerics).
        logits, loc, scale = map(flush_negligible_grad, self._component_params)
        return diag_normal_mixture_log_prob(value, loc, scale, logits.log_softmax(-1))


class MixtureOfGaussiansPrior(Prior):
    """:math:`p(z) = \\sum_k \\pi_k N(z; m_k, diag\\, s_k^2)` with learned ``pi, m, s``.

    Registered with Pyro as module ``"prior"``.

    :param int num_components: K.
    :param float init_loc_scale: component locations start at ``N(0, init_loc_scale^2)``.
    """

    def __init__(self, latent_dim=40, num_components=500, init_loc_scale=1.0, generator=None):
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim)
        num_components = check_int("num_components", num_components)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(
            init_loc_scale * torch.randn(num_components, latent_dim, generator=generator)
        )
        self.log_scale = nn.Parameter(torch.zeros(num_components, latent_dim))

    def register(self):
        pyro.module("prior", self)

    def build(self):
        return DiagonalNormalMixture(self.logits, self.loc, self.log_scale.exp())


class PseudoInputs(nn.Module):
    """K trainable pseudo-inputs, kept in ``[low, high]`` by a hardtanh as in the reference."""

    def __init__(self, init, low=0.0, high=1.0):
        super().__init__()
        self.weight = nn.Parameter(init)
        self.low, self.high = float(low), float(high)

    def forward(self):
        return nn.functional.hardtanh(self.weight, self.low, self.high)


def _check_encoder(encoder, pseudo_inputs):
    """The encoder's latent dimension L, after checking that it is an ``nn.Module`` or a
    function mapping the ``(K, D)`` pseudo-inputs to ``(loc, scale)``, each ``(K, L)``.

    Checked on the first pseudo-input only, without gradients, in evaluation mode and with
    torch's random state restored afterwards, so that nothing the caller can observe changes
    (no batch-norm statistics, no random numbers drawn).
    """
    if not callable(encoder) or isinstance(encoder, (tuple, list)):
        name = type(encoder).__name__
        kind = ("an " if name[:1].lower() in "aeiou" else "a ") + name
        kind += f" of {len(encoder)}" if isinstance(encoder, (tuple, list)) else ""
        raise TypeError(
            "LearnedVampPrior's encoder must be a torch.nn.Module, or a function "
            f"encode(pseudo_inputs) -> (loc, scale); got {kind}."
        )
    what = "torch.nn.Module" if isinstance(encoder, nn.Module) else "function"
    first = pseudo_inputs[:1].detach()
    if isinstance(encoder, nn.Module):
        # in the encoder's dtype: a float64 model may be converted as a whole (prior.double())
        # after the prior, and its float32 pseudo-inputs, are built
        dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), None)
        first = first if dtype is None else first.to(dtype)
    training = encoder.training if isinstance(encoder, nn.Module) else None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            if training:
                encoder.eval()
            out = encoder(first)
    except Exception as e:
        raise ValueError(
            f"LearnedVampPrior could not apply its encoder ({what}) to a pseudo-input of "
            f"shape (1, input_dim) = {tuple(first.shape)}: {type(e).__name__}: {e}"
        ) from e
    finally:
        if training:
            encoder.train(training)
    shapes = ([tuple(o.shape) if torch.is_tensor(o) else type(o).__name__ for o in out]
              if isinstance(out, (tuple, list)) else None)
    if (shapes is None or len(shapes) != 2 or shapes[0] != shapes[1]
            or not isinstance(shapes[0], tuple) or len(shapes[0]) != 2 or shapes[0][0] != 1):
        got = (f"a {type(out).__name__} of {shapes}" if shapes is not None
               else f"a {type(out).__name__}"
               + (f" of shape {tuple(out.shape)}" if torch.is_tensor(out) else ""))
        raise TypeError(
            f"LearnedVampPrior's encoder ({what}) must return (loc, scale), two tensors of shape "
            f"(num_pseudo, latent_dim); on a pseudo-input of shape {tuple(first.shape)} it "
            f"returned {got}."
        )
    return shapes[0][1]


class LearnedVampPrior(Prior):
    """VampPrior with learned pseudo-inputs: :math:`p(z) = \\frac1K \\sum_k q(z \\mid u_k)`.

    Registers the encoder under ``name`` (the guide's name for it, so that guide and prior
    train one set of weights) and the pseudo-inputs as ``"pseudo_inputs"``. The encoder is any
    ``torch.nn.Module`` mapping the ``(K, D)`` pseudo-inputs to ``(loc, scale)``, each
    ``(K, L)``, or a plain function doing so (it is then registered nowhere: its parameters
    are the caller's); anything else is refused here, at construction.

    Example::

        >>> import pyro
        >>> from ppl_vae.pyro import Encoder
        >>> encoder = Encoder(input_dim=8, latent_dim=2, hidden_dims=(16,))
        >>> prior = LearnedVampPrior(encoder, num_pseudo=5, name="my_encoder")
        >>> prior().batch_shape, prior().event_shape  # registers "my_encoder", "pseudo_inputs"
        (torch.Size([]), torch.Size([2]))
        >>> sorted({k.split("$$$")[0] for k in pyro.get_param_store()})
        ['my_encoder', 'pseudo_inputs']

    :param encoder: the guide's :class:`~ppl_vae.pyro.nets.Encoder`, or any module or function
        mapping ``(K, D)`` to ``(loc, scale)``.
    :param int num_pseudo: K.
    :param int input_dim: D; defaults to ``encoder.input_dim``.
    :param torch.Tensor init: optional ``(K, D)`` initial pseudo-inputs; by default
        ``N(init_loc, init_scale^2)``.
    :param str name: the name the encoder is registered under (default ``"encoder"``).
    """

    def __init__(self, encoder, num_pseudo=500, input_dim=None, init=None, init_loc=0.05,
                 init_scale=0.01, generator=None, *, name="encoder"):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str; got {name!r}.")
        num_pseudo = check_int("num_pseudo", num_pseudo)
        if input_dim is None:
            input_dim = getattr(encoder, "input_dim", None)
        input_dim = check_int("input_dim", input_dim)
        if init is None:
            init = init_loc + init_scale * torch.randn(num_pseudo, input_dim, generator=generator)
        elif tuple(init.shape) != (num_pseudo, input_dim):
            raise ValueError(
                f"init must have shape (num_pseudo, input_dim) = ({num_pseudo}, {input_dim}); "
                f"got {tuple(init.shape)}."
            )
        pseudo_inputs = PseudoInputs(init.float())
        self.latent_dim = _check_encoder(encoder, pseudo_inputs())
        self.encoder, self.name = encoder, name
        self.pseudo_inputs = pseudo_inputs

    @property
    def num_pseudo(self):
        return self.pseudo_inputs.weight.shape[0]

    def register(self):
        if isinstance(self.encoder, nn.Module):
            pyro.module(self.name, self.encoder)
        pyro.module("pseudo_inputs", self.pseudo_inputs)

    def build(self):
        return vamp_prior(self.encoder, self.pseudo_inputs())


def vamp_data_prior(encoder, data, num_pseudo=500, noise_scale=0.01, generator=None, *,
                    name="encoder"):
    """VampPrior-data: pseudo-inputs start at the first ``num_pseudo`` rows of ``data``
    (training images, ``(N, D)``) plus ``N(0, noise_scale^2)`` noise, as in the reference.
    ``encoder`` and ``name`` as for :class:`LearnedVampPrior`."""
    data = torch.as_tensor(data, dtype=torch.float32)
    if data.dim() != 2:
        raise ValueError(f"data must have shape (N, D); got {tuple(data.shape)}.")
    num_pseudo = check_int("num_pseudo", num_pseudo)
    if data.shape[0] < num_pseudo:
        raise ValueError(
            f"vamp_data_prior needs at least num_pseudo = {num_pseudo} rows of data; "
            f"got {data.shape[0]}."
        )
    init = data[:num_pseudo] + noise_scale * torch.randn(
        num_pseudo, data.shape[1], generator=generator
    )
    return LearnedVampPrior(encoder, num_pseudo, data.shape[1], init=init, name=name)
