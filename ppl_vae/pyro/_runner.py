"""The Pyro half of :mod:`ppl_vae.experiment`: builds a configured model/guide pair, and
trains, evaluates and draws it with this backend's functions.

Mirror of :mod:`ppl_vae.numpyro._runner`; :mod:`ppl_vae.experiment` is the one runner that
calls either (what the two share, it does itself).
"""

from functools import partial
from typing import NamedTuple

import numpy as np
import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

import ppl_vae.pyro as pv
import ppl_vae.pyro.distributed as pd
from ppl_vae.errors import ConfigError, Setting
from ppl_vae.guides.hvae_pyro import hvae_guide
from ppl_vae.guides.vae_pyro import vae_guide
from ppl_vae.models.hvae_pyro import hvae_model
from ppl_vae.models.pixelhvae_pyro import pixelhvae_model
from ppl_vae.models.vae_pyro import vae_model


class Built(NamedTuple):
    """A configured model/guide pair and its parts."""

    model: object
    guide: object
    prior: object
    networks: dict  # name -> module
    likelihood: object


def _to_numpy(t):
    return None if t is None else t.detach().cpu().numpy()


def _mean_image(d):
    base = d.base_dist
    return base.probs if hasattr(base, "probs") else base.loc


class Runner:
    """One experiment's Pyro side: ``config`` is a resolved
    :class:`~ppl_vae.experiment.ExperimentConfig`."""

    backend = "pyro"

    def __init__(self, config):
        self.config = config
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(Setting("device"), f" {config.device}: CUDA is not available on "
                              "this machine")
        # --distributed: this rank's device (cuda is cuda:LOCAL_RANK)
        self.device = (pd.local_device(config.device) if config.distributed
                       else torch.device(config.device))
        self.gather_rows = pd.gather_rows

    @property
    def seed_record(self):
        """How ``fit`` records this run's randomness in its configuration."""
        return "seed", self.config.seed

    def elbo(self):
        c, k = self.config, self.config.num_particles
        if c.elbo == "iwae":  # the IWAE bound, k importance samples per example
            return RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
        return (Trace_ELBO if c.elbo == "trace" else TraceMeanField_ELBO)(
            num_particles=k, vectorize_particles=k > 1)

    def build(self, prior_name, num_features, train=None):
        """The networks, the prior and the model/guide pair of ``prior_name``, initialised
        from the seed (``train``: the VampPrior-data's first images; None to load weights)."""
        c = self.config
        pyro.clear_param_store()
        pyro.set_rng_seed(c.seed)
        likelihood = pv.bernoulli if c.likelihood == "bernoulli" else pv.discretized_logistic
        D, L, H, P = num_features, c.latent_dim, list(c.hidden), likelihood.params_per_pixel
        if c.model == "vae":
            encoder = pv.Encoder(D, L, H, c.gated)  # q(z|x)
            decoder = pv.Decoder(L, D, H, c.gated, params_per_pixel=P)  # p(x|z)
            networks = {"encoder": encoder, "decoder": decoder}
        elif c.model in ("convhvae", "pixelhvae"):  # the HVAE with the paper's conv networks
            networks = _conv_networks(c, D, L, H, P)
            encoder, z1_encoder = networks["encoder"], networks["z1_encoder"]
            z1_prior, decoder = networks["z1_prior"], networks["decoder"]
        else:  # two stochastic layers, L + L latents; the prior is on the top one, z2
            encoder = pv.ConditionalGaussian(D, L, H, c.gated)  # q(z2|x)
            z1_encoder = pv.ConditionalGaussian((D, L), L, H, c.gated)  # q(z1|x,z2)
            z1_prior = pv.ConditionalGaussian(L, L, H, c.gated)  # p(z1|z2)
            decoder = pv.MultiInputDecoder((L, L), D, H, c.gated, params_per_pixel=P)
            networks = {"encoder": encoder, "z1_encoder": z1_encoder, "z1_prior": z1_prior,
                        "decoder": decoder}
        if prior_name == "standard":
            prior = pv.StandardNormalPrior(L)
        elif prior_name == "mog":
            prior = pv.MixtureOfGaussiansPrior(L, c.num_pseudo)
        elif prior_name == "vamp" or train is None:
            prior = pv.LearnedVampPrior(encoder, c.num_pseudo, D, init_loc=c.pseudo_init[0],
                                        init_scale=c.pseudo_init[1])
        else:
            prior = pv.vamp_data_prior(encoder, train, c.num_pseudo)
        if c.model == "vae":
            model = partial(vae_model, decoder=decoder, prior=prior, likelihood=likelihood)
            guide = partial(vae_guide, encoder=encoder)
        else:
            program = pixelhvae_model if c.model == "pixelhvae" else hvae_model
            model = partial(program, decoder=decoder, z1_prior=z1_prior, prior=prior,
                            likelihood=likelihood)
            guide = partial(hvae_guide, encoder=encoder, z1_encoder=z1_encoder)
        for module in (*networks.values(), prior):
            module.to(self.device)
        return Built(model, guide, prior, networks, likelihood)

    def fit(self, built, train, valid, **settings):
        return pv.fit(built.model, built.guide, train, valid, seed=self.config.seed,
                      device=self.device, distributed=self.config.distributed, **settings)

    def load(self, built, path, num_features):
        """Load ``path``'s parameters into ``built``'s networks; returns the checkpoint's
        metadata."""
        return pv.load_params(path, built.model, built.guide,
                              torch.zeros(2, num_features, device=self.device),
                              device=self.device)

    def test_elbo(self, built, result, test):
        return pv.elbo_per_example(built.model, built.guide,
                                   torch.as_tensor(test, device=self.device),
                                   distributed=self.config.distributed)

    def log_weight_chunks(self, built, result, test):
        """``(rows, (n, S) log-weights as NumPy)`` chunk by chunk (this rank's, distributed)."""
        chunks = pv.log_weight_chunks(built.model, built.guide,
                                      torch.as_tensor(test, device=self.device),
                                      num_samples=self.config.eval_samples,
                                      distributed=self.config.distributed)
        return ((rows, log_w.cpu().numpy()) for rows, log_w in chunks)

    def ais(self, built, result, test):
        c = self.config
        return pv.ais_log_likelihood(built.model, built.guide,
                                     torch.as_tensor(test, device=self.device),
                                     num_steps=c.ais_steps, num_chains=c.ais_chains,
                                     num_leapfrog=c.ais_leapfrog, return_details=True)

    def figures(self, built, result, train, test):
        """Samples, reconstructions, pseudo-inputs, latent codes and the prior's component
        locations, as NumPy arrays."""
        prior, likelihood, nets = built.prior, built.likelihood, built.networks
        encoder, decoder = nets["encoder"], nets["decoder"]
        x_test = torch.as_tensor(test, device=self.device)
        with torch.no_grad(), pv.prior_cache():
            p_z = prior()
            z = p_z.sample((100,))
            pseudo = prior.pseudo_inputs() if hasattr(prior, "pseudo_inputs") else None
            train_codes = _encode(encoder, torch.as_tensor(train, device=self.device))
            if self.config.model == "vae":
                samples = _mean_image(likelihood(decoder(z)))
                recon = _mean_image(likelihood(decoder(encoder(x_test[:10])[0])))
                test_codes = encoder(x_test)[0]
                layers = {"z": _to_numpy(test_codes)}
            else:  # decode the means of p(z1|z2) and of q(z1|x,z2) at q(z2|x)'s mean
                z1_prior, z1_encoder = nets["z1_prior"], nets["z1_encoder"]
                z2 = encoder(x_test[:10])[0]
                if self.config.model == "pixelhvae":  # ancestral sampling, pixel by pixel
                    samples = _pixel_means(decoder, likelihood, z1_prior(z)[0], z)
                    recon = _pixel_means(decoder, likelihood, z1_encoder(x_test[:10], z2)[0], z2)
                else:
                    samples = _mean_image(likelihood(decoder(z1_prior(z)[0], z)))
                    recon = _mean_image(likelihood(decoder(z1_encoder(x_test[:10], z2)[0], z2)))
                z1_means, z2_means = pv.hvae_posterior_means(encoder, z1_encoder, x_test)
                test_codes = torch.as_tensor(z2_means)
                layers = {"z1": z1_means, "z2": z2_means}
        return dict(samples=_to_numpy(samples), reconstructions=_to_numpy(recon),
                    pseudo_inputs=_to_numpy(pseudo), train_codes=_to_numpy(train_codes),
                    test_codes=_to_numpy(test_codes), prior_locs=_to_numpy(_prior_locs(p_z)),
                    layers={k: np.asarray(v) for k, v in layers.items()})


def _prior_locs(p_z):
    """The component locations of a mixture prior (the VampPrior's encoded pseudo-inputs, the
    MoG's means), or None."""
    locs = getattr(p_z, "component_loc", None)
    if locs is None and hasattr(p_z, "component_distribution"):
        locs = p_z.component_distribution.base_dist.loc
    return locs


def _conv_networks(c, D, L, H, P):
    """The convHVAE's or the PixelHVAE's networks (:mod:`ppl_vae.pyro.conv`), the reference's
    layer sizes with ``hidden`` for its dense widths (300)."""
    shape = tuple(c.image_shape)
    if shape[0] * shape[1] != D:
        raise ConfigError(Setting("image_shape"), f" {shape} does not hold the {D} pixels of "
                          "an image")
    decoder = (pv.ConvDecoder(shape, (L, L), H[0], params_per_pixel=P)
               if c.model == "convhvae" else pv.PixelCNNDecoder(shape, (L, L), params_per_pixel=P))
    return {"encoder": pv.ConvEncoder(shape, L),  # q(z2|x), also the VampPrior's
            "z1_encoder": pv.ConvEncoder(shape, L, cond_dim=L, hidden_dim=H[-1],
                                         kernel_sizes=(3,) * 5),  # q(z1|x,z2)
            "z1_prior": pv.ConditionalGaussian(L, L, H, c.gated),  # p(z1|z2)
            "decoder": decoder}  # p(x|z1,z2)


def _encode(encoder, x, batch_size=1000):
    """q(z|x)'s means of ``x`` ``(N, D)``, ``batch_size`` rows at a time (a convolutional
    encoder's activations for 50,000 images at once would take gigabytes)."""
    return torch.cat([encoder(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])


def _pixel_means(decoder, likelihood, z1, z2):
    """Ancestral samples of a PixelCNN decoder, shown as the reference shows them: the means
    of each pixel's conditional given the sampled pixels before it."""
    x = pv.sample_pixelcnn(decoder, z1, z2, likelihood=likelihood)
    return _mean_image(likelihood(decoder(x, z1, z2)))
