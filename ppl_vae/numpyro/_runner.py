"""The NumPyro half of :mod:`ppl_vae.experiment`: builds a configured model/guide pair, and
trains, evaluates and draws it with this backend's functions.

Mirror of :mod:`ppl_vae.pyro._runner`; :mod:`ppl_vae.experiment` is the one runner that
calls either (what the two share, it does itself). Randomness: the nine keys of
``random.split(PRNGKey(seed), 9)``, the same for every prior, each with one use.
"""

from functools import partial
from typing import NamedTuple

import jax
import numpy as np
from jax import random
from numpyro import handlers
from numpyro.contrib.module import eqx_module
from numpyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

import ppl_vae.numpyro as pv
import ppl_vae.numpyro.distributed as pd
from ppl_vae.errors import ConfigError, Setting
from ppl_vae.guides.hvae_numpyro import hvae_guide
from ppl_vae.guides.vae_numpyro import vae_guide
from ppl_vae.models.hvae_numpyro import hvae_model
from ppl_vae.models.pixelhvae_numpyro import pixelhvae_model
from ppl_vae.models.vae_numpyro import vae_model
from ppl_vae.numpyro.training import _key_data

# what each of the nine keys is for
_ENCODER, _DECODER, _PRIOR, _FIT, _ELBO, _IS, _Z1_ENCODER, _Z1_PRIOR, _MEANS = range(9)


class Built(NamedTuple):
    """A configured model/guide pair and its parts."""

    model: object
    guide: object
    prior: object
    networks: dict  # name -> Equinox module (initial weights)
    likelihood: object


def _mean_image(d):
    base = d.base_dist
    return base.probs if hasattr(base, "probs") else base.loc


class Runner:
    """One experiment's NumPyro side: ``config`` is a resolved
    :class:`~ppl_vae.experiment.ExperimentConfig`."""

    backend = "numpyro"

    def __init__(self, config):
        self.config = config
        platform = "gpu" if config.device.startswith("cuda") else config.device
        try:
            self.device = jax.devices(platform)[
                int(config.device.split(":")[1]) if ":" in config.device else 0]
        except (RuntimeError, IndexError):
            raise ConfigError(Setting("device"), f" {config.device}: no such JAX device on "
                              "this machine") from None
        if config.distributed:  # every device of JAX's default platform: it must be this one
            if jax.default_backend() != platform:
                raise ConfigError(
                    Setting("distributed"), f" runs on every {jax.default_backend()} device "
                    "JAX sees; ", Setting("device"), f" {config.device} asks for {platform} "
                    f"(set JAX_PLATFORMS={platform} for that)")
            self.device = None
        self.keys = random.split(random.PRNGKey(config.seed), 9)
        self.gather_rows = pd.gather_rows

    @property
    def seed_record(self):
        """How ``fit`` records this run's randomness in its configuration."""
        return "rng_key", _key_data(self.keys[_FIT])

    def elbo(self):
        c = self.config
        if c.elbo == "iwae":  # the IWAE bound, k importance samples per example
            return RenyiELBO(alpha=0, num_particles=c.num_particles)
        return (Trace_ELBO if c.elbo == "trace" else TraceMeanField_ELBO)(
            num_particles=c.num_particles)

    def build(self, prior_name, num_features, train=None):
        """The networks, the prior and the model/guide pair of ``prior_name``, initialised
        from the seed (``train``: the VampPrior-data's first images; None to load weights)."""
        c, keys = self.config, self.keys
        likelihood = pv.bernoulli if c.likelihood == "bernoulli" else pv.discretized_logistic
        D, L, H, P = num_features, c.latent_dim, list(c.hidden), likelihood.params_per_pixel
        if c.model == "vae":
            encoder = pv.Encoder(D, L, H, c.gated, rng_key=keys[_ENCODER])  # q(z|x)
            decoder = pv.Decoder(L, D, H, c.gated, params_per_pixel=P, rng_key=keys[_DECODER])
            networks = {"encoder": encoder, "decoder": decoder}
        elif c.model in ("convhvae", "pixelhvae"):  # the HVAE with the paper's conv networks
            networks = _conv_networks(c, keys, D, L, H, P)
            encoder, z1_encoder = networks["encoder"], networks["z1_encoder"]
            z1_prior, decoder = networks["z1_prior"], networks["decoder"]
        else:  # two stochastic layers, L + L latents; the prior is on the top one, z2
            encoder = pv.ConditionalGaussian(D, L, H, c.gated, rng_key=keys[_ENCODER])  # q(z2|x)
            z1_encoder = pv.ConditionalGaussian((D, L), L, H, c.gated,
                                                rng_key=keys[_Z1_ENCODER])  # q(z1|x,z2)
            z1_prior = pv.ConditionalGaussian(L, L, H, c.gated, rng_key=keys[_Z1_PRIOR])
            decoder = pv.MultiInputDecoder((L, L), D, H, c.gated, params_per_pixel=P,
                                           rng_key=keys[_DECODER])  # p(x|z1,z2)
            networks = {"encoder": encoder, "z1_encoder": z1_encoder, "z1_prior": z1_prior,
                        "decoder": decoder}
        if prior_name == "standard":
            prior = pv.StandardNormalPrior(L)
        elif prior_name == "mog":
            prior = pv.MixtureOfGaussiansPrior(L, c.num_pseudo, rng_key=keys[_PRIOR])
        elif prior_name == "vamp" or train is None:
            prior = pv.LearnedVampPrior(encoder, c.num_pseudo, D, init_loc=c.pseudo_init[0],
                                        init_scale=c.pseudo_init[1], rng_key=keys[_PRIOR])
        else:
            prior = pv.vamp_data_prior(encoder, train, c.num_pseudo, rng_key=keys[_PRIOR])
        if c.model == "vae":
            model = partial(vae_model, decoder=decoder, prior=prior, likelihood=likelihood)
            guide = partial(vae_guide, encoder=encoder)
        else:
            program = pixelhvae_model if c.model == "pixelhvae" else hvae_model
            model = partial(program, decoder=decoder, z1_prior=z1_prior, prior=prior,
                            likelihood=likelihood)
            guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
        return Built(model, guide, prior, networks, likelihood)

    def fit(self, built, train, valid, **settings):
        return pv.fit(self.keys[_FIT], built.model, built.guide, train, valid,
                      device=self.device, distributed=self.config.distributed, **settings)

    def load(self, built, path, num_features):
        """The parameters of ``path`` for ``built``; returns ``(params, metadata)``."""
        return pv.load_params(path, built.model, built.guide, np.zeros((2, num_features)))

    def test_elbo(self, built, result, test):
        return pv.elbo_per_example(self.keys[_ELBO], built.model, built.guide, test,
                                   params=result.params, distributed=self.config.distributed)

    def log_weight_chunks(self, built, result, test):
        """``(rows, (n, S) log-weights)`` chunk by chunk (this host's, distributed)."""
        return pv.log_weight_chunks(self.keys[_IS], built.model, built.guide, test,
                                    num_samples=self.config.eval_samples, params=result.params,
                                    device=self.device, distributed=self.config.distributed)

    def ais(self, built, result, test):
        c = self.config
        return pv.ais_log_likelihood(random.fold_in(self.keys[_IS], 1), built.model,
                                     built.guide, test, num_steps=c.ais_steps,
                                     num_chains=c.ais_chains, num_leapfrog=c.ais_leapfrog,
                                     params=result.params, device=self.device,
                                     return_details=True)

    def figures(self, built, result, train, test):
        """Samples, reconstructions, pseudo-inputs, latent codes and the prior's component
        locations, as NumPy arrays."""
        c, prior, likelihood, nets = self.config, built.prior, built.likelihood, built.networks
        with handlers.seed(rng_seed=c.seed), handlers.substitute(data=result.params):
            # eqx_module under substitute returns the trained network
            enc, dec = eqx_module("encoder", nets["encoder"]), eqx_module("decoder",
                                                                          nets["decoder"])
            p_z = prior()
            z = p_z.sample(random.PRNGKey(c.seed), (100,))
            if c.model == "vae":
                samples = _mean_image(likelihood(dec(z)))
                recon = _mean_image(likelihood(dec(enc(test[:10])[0])))
                test_codes = enc(test)[0]
                layers = {"z": np.asarray(test_codes)}
            else:  # decode the means of p(z1|z2) and of q(z1|x,z2) at q(z2|x)'s mean
                enc1 = eqx_module("z1_encoder", nets["z1_encoder"])
                prior1 = eqx_module("z1_prior", nets["z1_prior"])
                z2 = enc(test[:10])[0]
                if c.model == "pixelhvae":  # ancestral sampling, pixel by pixel
                    key = random.PRNGKey(c.seed)
                    samples = _pixel_means(random.fold_in(key, 1), dec, likelihood,
                                           prior1(z)[0], z)
                    recon = _pixel_means(random.fold_in(key, 2), dec, likelihood,
                                         enc1(test[:10], z2)[0], z2)
                else:
                    samples = _mean_image(likelihood(dec(prior1(z)[0], z)))
                    recon = _mean_image(likelihood(dec(enc1(test[:10], z2)[0], z2)))
                z1_means, z2_means = pv.hvae_posterior_means(
                    self.keys[_MEANS], nets["encoder"], nets["z1_encoder"], test,
                    params=result.params)
                test_codes = z2_means
                layers = {"z1": z1_means, "z2": z2_means}
            pseudo = (eqx_module("pseudo_inputs", prior.pseudo_inputs)()
                      if hasattr(prior, "pseudo_inputs") else None)
            train_codes = _encode(enc, train)
        return dict(samples=np.asarray(samples), reconstructions=np.asarray(recon),
                    pseudo_inputs=None if pseudo is None else np.asarray(pseudo),
                    train_codes=np.asarray(train_codes), test_codes=np.asarray(test_codes),
                    prior_locs=_prior_locs(p_z), layers={k: np.asarray(v)
                                                          for k, v in layers.items()})


def _prior_locs(p_z):
    """The component locations of a mixture prior (the VampPrior's encoded pseudo-inputs, the
    MoG's means), or None."""
    locs = getattr(p_z, "component_loc", None)
    if locs is None and hasattr(p_z, "component_distribution"):
        locs = p_z.component_distribution.base_dist.loc
    return None if locs is None else np.asarray(locs)


def _conv_networks(c, keys, D, L, H, P):
    """The convHVAE's or the PixelHVAE's networks (:mod:`ppl_vae.numpyro.conv`), the
    reference's layer sizes with ``hidden`` for its dense widths (300)."""
    shape = tuple(c.image_shape)
    if shape[0] * shape[1] != D:
        raise ConfigError(Setting("image_shape"), f" {shape} does not hold the {D} pixels of "
                          "an image")
    decoder = (pv.ConvDecoder(shape, (L, L), H[0], params_per_pixel=P, rng_key=keys[_DECODER])
               if c.model == "convhvae" else
               pv.PixelCNNDecoder(shape, (L, L), params_per_pixel=P, rng_key=keys[_DECODER]))
    return {"encoder": pv.ConvEncoder(shape, L, rng_key=keys[_ENCODER]),  # q(z2|x)
            "z1_encoder": pv.ConvEncoder(shape, L, cond_dim=L, hidden_dim=H[-1],
                                         kernel_sizes=(3,) * 5,
                                         rng_key=keys[_Z1_ENCODER]),  # q(z1|x,z2)
            "z1_prior": pv.ConditionalGaussian(L, L, H, c.gated, rng_key=keys[_Z1_PRIOR]),
            "decoder": decoder}  # p(x|z1,z2)


def _encode(encoder, x, batch_size=1000):
    """q(z|x)'s means of ``x`` ``(N, D)``, ``batch_size`` rows at a time (a convolutional
    encoder's activations for 50,000 images at once would take gigabytes)."""
    encode = jax.jit(lambda xb: encoder(xb)[0])
    return np.concatenate([np.asarray(encode(x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def _pixel_means(key, decoder, likelihood, z1, z2):
    """Ancestral samples of a PixelCNN decoder, shown as the reference shows them: the means
    of each pixel's conditional given the sampled pixels before it."""
    x = pv.sample_pixelcnn(key, decoder, z1, z2, likelihood=likelihood)
    return _mean_image(likelihood(decoder(x, z1, z2)))
