"""The NumPyro (JAX) half of ppl_vae.

Mirror image of :mod:`ppl_vae.pyro`: same module names, same public names. The signatures
match too, plus NumPyro's leading ``rng_key`` wherever randomness is used; networks are
Equinox modules (:mod:`ppl_vae.numpyro.nets`) and trained parameters are passed explicitly
(``params=``), since NumPyro keeps no global parameter store.
"""

from ppl_vae.errors import (
    CheckpointError,
    CheckpointMismatchError,
    DistributedError,
    TrainingDivergedError,
    WarmupWarning,
)
from ppl_vae.numpyro.ais import (
    AISResult,
    BDMCBounds,
    BDMCResult,
    ais_log_likelihood,
    ais_schedule,
    bdmc_bounds,
)
from ppl_vae.numpyro.conv import (
    ConvDecoder,
    ConvEncoder,
    GatedConv2d,
    MaskedConv2d,
    PixelCNNDecoder,
    sample_pixelcnn,
)
from ppl_vae.numpyro.evaluation import (
    importance_log_likelihood,
    importance_log_weights,
    log_weight_chunks,
)
from ppl_vae.numpyro.handlers import latent_scale
from ppl_vae.numpyro.hvae import ConditionalGaussian, MultiInputDecoder, hvae_posterior_means
from ppl_vae.numpyro.likelihoods import DiscretizedLogistic, bernoulli, discretized_logistic
from ppl_vae.numpyro.nets import MLP, Decoder, Encoder, GatedDense
from ppl_vae.numpyro.priors import (
    LearnedVampPrior,
    MixtureOfGaussiansPrior,
    Prior,
    StandardNormalPrior,
    prior_cache,
    vamp_data_prior,
)
from ppl_vae.numpyro.training import (
    FitResult,
    elbo_per_example,
    fit,
    load_params,
    warmup_beta,
)
from ppl_vae.numpyro.vamp_prior import VampPrior, vamp_prior

__all__ = [
    "VampPrior",
    "vamp_prior",
    "Prior",
    "StandardNormalPrior",
    "MixtureOfGaussiansPrior",
    "LearnedVampPrior",
    "vamp_data_prior",
    "prior_cache",
    "bernoulli",
    "discretized_logistic",
    "DiscretizedLogistic",
    "GatedDense",
    "MLP",
    "Encoder",
    "Decoder",
    "importance_log_likelihood",
    "importance_log_weights",
    "log_weight_chunks",
    "ais_log_likelihood",
    "bdmc_bounds",
    "ais_schedule",
    "AISResult",
    "BDMCBounds",
    "BDMCResult",
    "fit",
    "FitResult",
    "elbo_per_example",
    "warmup_beta",
    "latent_scale",
    "load_params",
    "TrainingDivergedError",
    "DistributedError",
    "CheckpointError",
    "CheckpointMismatchError",
    "WarmupWarning",
    "ConditionalGaussian",
    "MultiInputDecoder",
    "hvae_posterior_means",
    "GatedConv2d",
    "MaskedConv2d",
    "ConvEncoder",
    "ConvDecoder",
    "PixelCNNDecoder",
    "sample_pixelcnn",
]
