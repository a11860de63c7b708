"""The convolutional networks (convHVAE, PixelHVAE) in both backends: the PixelCNN is causal
(by perturbation, masks 'A' and 'B'), its sampling windows and ancestral sampling are exact,
the backends agree in float64 with the same weights, a 1 x 1 image reduces the networks to
their MLP twins, and training lowers the loss. The example script's runs are in
``test_examples_conv.py``."""

import importlib
import importlib.util
from functools import partial

import numpy as np
import pytest

H, W = 6, 5  # not square, like Frey Faces' 28 x 20
D = H * W
TOL64 = 1e-12  # float64: a masked tap contributes an exact zero; anything else is O(0.1)


@pytest.fixture(autouse=True)
def _one_thread():
    # Small convolutions: a second intra-op thread only adds contention on a shared CPU.
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- helpers
def _call(backend, net, *inputs):
    """``net(*inputs)`` on float64 NumPy inputs, as NumPy (a tuple stays a tuple)."""
    out = net(*(backend.array(v) for v in inputs))
    if isinstance(out, tuple):
        return tuple(backend.numpy(o) for o in out)
    return backend.numpy(out)


def _nhwc(backend, images):
    """``(N, C, H, W)`` NumPy -> the backend's layout for a single conv layer."""
    return images if backend.name == "pyro" else np.transpose(images, (0, 2, 3, 1))


def _nchw(backend, out):
    return out if backend.name == "pyro" else np.transpose(out, (0, 3, 1, 2))


def _dependence(outputs_of, base, num_pixels, pixels):
    """``dep[k, j]``: does output pixel k change when input pixel j does? ``outputs_of(x)``
    maps a batch of inputs to ``(batch, channels, num_pixels)``; ``pixels(x, j)`` perturbs
    pixel j of every input (all of its perturbed channels)."""
    batch = np.stack([pixels(base.copy(), j) for j in range(num_pixels)])
    out, ref = outputs_of(batch), outputs_of(base[None])[0]
    return np.abs(out - ref).max(axis=1).T > TOL64  # (k, j)


def _eqx_at(module, path):
    """The Equinox sub-module or array at a torch parameter path: tuples index directly,
    MLPs through ``.layers``."""
    for part in path.split("."):
        if part.isdigit():
            module = module[int(part)] if isinstance(module, tuple) else module.layers[int(part)]
        else:
            module = getattr(module, part)
    return module


def copy_weights(torch_module, eqx_module):
    """The Equinox twin of a torch module with its weights (same parameter paths)."""
    import equinox as eqx
    import jax.numpy as jnp

    for name, p in torch_module.named_parameters():
        value = jnp.asarray(p.detach().numpy())
        assert _eqx_at(eqx_module, name).shape == value.shape, name
        eqx_module = eqx.tree_at(lambda m, name=name: _eqx_at(m, name), eqx_module, value)
    return eqx_module


def _pixelcnn(backend, shape=(H, W), **kwargs):
    kwargs.setdefault("channels", 8)
    return backend.net("PixelCNNDecoder", shape, (3, 2), **kwargs)


# ------------------------------------------------------------------------- public names
def test_conv_public_names_are_the_same():
    import ppl_vae.numpyro as pn
    import ppl_vae.numpyro.conv
    import ppl_vae.pyro as pp
    import ppl_vae.pyro.conv

    assert ppl_vae.pyro.conv.__all__ == ppl_vae.numpyro.conv.__all__
    for name in ppl_vae.pyro.conv.__all__:
        assert name in pp.__all__ and name in pn.__all__


# ---------------------------------------------------------------------------- causality
@pytest.mark.parametrize("mask_type,conditioning", [("A", 0), ("B", 0), ("A", 1)])
def test_masked_conv_sees_exactly_its_mask(backend, mask_type, conditioning):
    """One layer, by perturbation: output pixel k depends on input pixel j exactly when j is
    one of k's kept taps: above k or left of it in its row ('A'), or k itself too ('B'); the
    latent channels ('A' with conditioning) see k itself."""
    rng = np.random.default_rng(0)
    channels = 1 + conditioning
    with backend.float64():
        layer = backend.net("MaskedConv2d", channels, 4, 3, mask_type,
                            conditioning_channels=conditioning)
        base = rng.random((channels, H, W))

        def outputs_of(x):
            out = _nchw(backend, _call(backend, layer, _nhwc(backend, x)))
            return out.reshape(len(x), 4, D)

        for channel in range(channels):
            def pixels(x, j, channel=channel):
                x[channel].flat[j] += 1.0 + rng.random()
                return x

            dep = _dependence(outputs_of, base, D, pixels)
            sees_itself = mask_type == "B" or channel >= channels - conditioning
            rows, cols = np.divmod(np.arange(D), W)
            dr, dc = rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]  # j - k
            expected = (np.abs(dc) <= 1) & ((dr == -1) | ((dr == 0) & (dc < 0)))
            expected |= sees_itself & (dr == 0) & (dc == 0)
            np.testing.assert_array_equal(dep, expected)


def test_pixelcnn_is_causal(backend):
    """The whole decoder ('A' then seven 'B' layers): every output pixel k (both parameters
    of the discretised logistic) ignores input pixels k, k+1, ... and depends on its left
    and upper neighbours; pixel (0, 0) still sees the latents (their maps take 'B')."""
    rng = np.random.default_rng(1)
    with backend.float64():
        dec = _pixelcnn(backend, params_per_pixel=2)
        base = rng.random(D)
        # one call (one compilation): each pixel perturbed in turn, then the base image, then
        # the base image with z1 moved
        x = np.repeat(base[None], D + 2, 0)
        x[np.arange(D), np.arange(D)] = rng.random(D)
        z1, z2 = np.repeat(rng.standard_normal((1, 3)), D + 2, 0), rng.standard_normal((1, 2))
        z1[-1] += 1.0
        out = _call(backend, dec, x, z1, np.repeat(z2, D + 2, 0)).reshape(D + 2, 2, D)
        dep = (np.abs(out[:D] - out[D]).max(axis=1) > TOL64).T  # (k, j)
        assert not np.triu(dep).any()  # j >= k: never
        k = np.arange(D)
        left, up = k[k % W > 0], k[k >= W]
        assert dep[left, left - 1].all() and dep[up, up - W].all()
        assert np.abs(out[D + 1, :, 0] - out[D, :, 0]).max() > 1e-6


@pytest.mark.parametrize("shape,num_layers", [((H, W), 8), ((9, 11), 2)])
def test_window_params_equal_the_whole_image(backend, shape, num_layers):
    """Each pixel's parameters from its sampling window equal the whole image's: the window
    is the whole image when R = 8 exceeds it, and cut inside the image for R = 2."""
    rng = np.random.default_rng(2)
    h, w = shape
    with backend.float64():
        dec = _pixelcnn(backend, shape, num_layers=num_layers, params_per_pixel=2)
        x, z1, z2 = rng.random((2, h * w)), rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
        full = _call(backend, dec, x, z1, z2).reshape(2, 2, h, w)
        xb, z1b, z2b = backend.array(x), backend.array(z1), backend.array(z2)
        maps = dec.latent_maps(z1b, z2b)
        window_params = dec.window_params
        if backend.name == "numpyro":  # one compilation, not one per operation and pixel
            import equinox as eqx

            window_params = eqx.filter_jit(lambda *a: dec.window_params(*a))
        for row in range(h):
            for col in range(w):
                if backend.name == "pyro":
                    rows, cols, (i, j) = dec.window(row, col)
                    img = xb.reshape(2, 1, h, w)[:, :, rows, cols]
                    params = window_params(img, maps[:, :, rows, cols], i, j)
                else:
                    top, left, (wh, ww), (i, j) = dec.window(row, col)
                    sl = (slice(None), slice(int(top), int(top) + wh),
                          slice(int(left), int(left) + ww))
                    img = xb.reshape(2, h, w, 1)[sl]
                    params = window_params(img, maps[sl], i, j)
                np.testing.assert_allclose(backend.numpy(params), full[:, :, row, col],
                                           rtol=0, atol=TOL64)


def test_sample_pixelcnn_is_ancestral(backend):
    """With logits scaled by 1e4 (over their spread) each draw is the sign of its logit
    given the pixels drawn before it, so a correct pixel-by-pixel sampler returns a fixed point: every pixel equals
    ``logit_i(x_<i) > 0`` recomputed on the finished image."""
    rng = np.random.default_rng(3)
    dec = _pixelcnn(backend, params_per_pixel=1)
    z1, z2 = backend.array(rng.standard_normal((40, 3))), backend.array(rng.standard_normal((40, 2)))
    # centred on the logits' median over random images and scaled by their spread, so that
    # both values get drawn
    logits = backend.numpy(dec(backend.array(rng.random((40, D))), z1, z2))
    centre, spread = float(np.median(logits)), float(np.std(logits))

    def sharp(params):
        return backend.lib.bernoulli(1e4 / spread * (params - centre))

    sharp.params_per_pixel = 1
    if backend.name == "pyro":
        x = backend.lib.sample_pixelcnn(dec, z1, z2, likelihood=sharp)
    else:
        x = backend.lib.sample_pixelcnn(backend.key(0), dec, z1, z2, likelihood=sharp)
    logits = (backend.numpy(dec(x, z1, z2)) - centre) / spread
    x = backend.numpy(x)
    assert x.shape == (40, D) and 0.1 < x.mean() < 0.9
    decided = np.abs(logits) > 1e-2  # P(wrong draw) < exp(-100) there
    assert decided.mean() > 0.8
    np.testing.assert_array_equal(x[decided], (logits > 0)[decided])


def test_sample_pixelcnn_grey_levels(backend):
    rng = np.random.default_rng(4)
    dec = _pixelcnn(backend, params_per_pixel=2)
    z1, z2 = backend.array(rng.standard_normal((8, 3))), backend.array(rng.standard_normal((8, 2)))
    lik = backend.lib.discretized_logistic
    args = (dec, z1, z2) if backend.name == "pyro" else (backend.key(0), dec, z1, z2)
    x = backend.numpy(backend.lib.sample_pixelcnn(*args, likelihood=lik))
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-3)  # on the 256-level grid
    assert x.min() >= 0 and x.max() <= 1 and len(np.unique(x)) > 10
    with pytest.raises(ValueError, match="parameter"):
        backend.lib.sample_pixelcnn(*args, likelihood=backend.lib.bernoulli)


# ------------------------------------------------------------------------ two backends
def _programs(backend_name, model_name, nets, prior, likelihood):
    """The (model, guide) pair: the convHVAE is the HVAE's program with conv networks, the
    PixelHVAE its own model with the HVAE's guide."""
    program = "pixelhvae" if model_name == "pixelhvae" else "hvae"
    model = getattr(importlib.import_module(f"ppl_vae.models.{program}_{backend_name}"),
                    f"{program}_model")
    guide = importlib.import_module(f"ppl_vae.guides.hvae_{backend_name}").hvae_guide
    return (partial(model, decoder=nets["decoder"], z1_prior=nets["z1_prior"], prior=prior,
                    likelihood=likelihood),
            partial(guide, encoder=nets["encoder"], z1_encoder=nets["z1_encoder"]))


def _conv_nets(lib, model_name, P, **key):
    def k(i):
        return {"rng_key": __import__("jax").random.PRNGKey(i)} if key else {}

    L = 3
    decoder = (lib.ConvDecoder((H, W), (L, L), 8, channels=8, params_per_pixel=P, **k(3))
               if model_name == "convhvae" else
               lib.PixelCNNDecoder((H, W), (L, L), channels=8, params_per_pixel=P, **k(3)))
    return dict(encoder=lib.ConvEncoder((H, W), L, **k(0)),
                z1_encoder=lib.ConvEncoder((H, W), L, cond_dim=L, hidden_dim=8,
                                           kernel_sizes=(3,) * 5, **k(1)),
                z1_prior=lib.ConditionalGaussian(L, L, (8, 7), **k(2)), decoder=decoder)


@pytest.mark.parametrize("model_name", ["convhvae", "pixelhvae"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_backends_agree_in_float64(model_name, likelihood):
    """Same weights (copied by path), same data and latents: the same log p(x, z1, z2) and
    log q(z1, z2 | x), VampPrior with K = 4 image pseudo-inputs encoded by the conv q(z2|x)."""
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from numpyro.infer.util import log_density
    from pyro import poutine

    import ppl_vae.numpyro as pn
    import ppl_vae.pyro as pp

    P = 1 if likelihood == "bernoulli" else 2
    rng = np.random.default_rng(5)
    x = (rng.random((4, D)) < 0.4) * 1.0 if P == 1 else np.round(rng.random((4, D)) * 255) / 255
    z = {"z1": 1.3 * rng.standard_normal((4, 3)), "z2": 1.3 * rng.standard_normal((4, 3))}
    init = np.linspace(-0.3, 1.3, 4 * D).reshape(4, D)  # both sides of the hardtanh
    torch.manual_seed(0)
    nets_p = _conv_nets(pp, model_name, P)
    prior_p = pp.LearnedVampPrior(nets_p["encoder"], 4, init=torch.from_numpy(init))
    for net in (*nets_p.values(), prior_p):  # after the prior checked its float32 encoder
        net.double()
    with torch.no_grad():
        prior_p.pseudo_inputs.weight.copy_(torch.from_numpy(init))
    mp, gp = _programs("pyro", model_name, nets_p, prior_p, getattr(pp, likelihood))
    zt = {k: torch.from_numpy(v) for k, v in z.items()}
    joint_p = poutine.trace(poutine.condition(mp, data=zt)).get_trace(
        torch.from_numpy(x)).log_prob_sum().item()
    guide_p = poutine.trace(poutine.condition(gp, data=zt)).get_trace(
        torch.from_numpy(x)).log_prob_sum().item()
    with jax.enable_x64(True):
        nets_n = {k: copy_weights(nets_p[k], v)
                  for k, v in _conv_nets(pn, model_name, P, key=True).items()}
        prior_n = pn.LearnedVampPrior(nets_n["encoder"], 4, init=init)
        mn, gn = _programs("numpyro", model_name, nets_n, prior_n, getattr(pn, likelihood))
        zj = {k: jnp.asarray(v) for k, v in z.items()}

        @jax.jit  # one compilation, not one per operation
        def numpyro_side(xj, zj):
            return log_density(mn, (xj,), {}, zj)[0], log_density(gn, (xj,), {}, zj)[0]

        joint_n, guide_n = numpyro_side(jnp.asarray(x), zj)
        assert joint_n.dtype == jnp.float64
    np.testing.assert_allclose(float(joint_n), joint_p, rtol=1e-9)
    np.testing.assert_allclose(float(guide_n), guide_p, rtol=1e-9)


@pytest.mark.parametrize("kernel,stride,shape", [(3, 1, (7, 6)), (3, 2, (7, 6)), (3, 2, (8, 5)),
                                                  (7, 1, (9, 8)), (5, 1, (6, 5)), (1, 1, (4, 4))])
def test_numpyro_weight_gradient_is_xlas(kernel, stride, shape):
    """The NumPyro convolutions' own weight gradient (a channel-last convolution, which XLA's
    CPU backend compiles well inside loops) is JAX's, in float64, for every geometry the
    networks use: odd kernels 1 to 7, strides 1 and 2, even and odd sizes."""
    jax = pytest.importorskip("jax")
    from ppl_vae.numpyro.conv import _conv_loop_safe, _conv_nhwc

    rng = np.random.default_rng(10)
    with jax.enable_x64(True):
        x = jax.numpy.asarray(rng.standard_normal((2, *shape, 3)))
        w = jax.numpy.asarray(rng.standard_normal((kernel, kernel, 3, 4)))

        def loss(conv):
            return lambda x, w: (conv(x, w, stride, kernel // 2) ** 2).sum()

        ours = jax.grad(loss(_conv_loop_safe), argnums=(0, 1))(x, w)
        xla = jax.grad(loss(_conv_nhwc), argnums=(0, 1))(x, w)
    for a, b in zip(ours, xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- 1 x 1: the MLP twins
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_one_pixel_conv_decoder_is_its_mlp_twin(backend, likelihood):
    """On a 1 x 1 image a padded 3 x 3 convolution is its centre tap, so the convHVAE's
    decoder is the gated MLP ``MultiInputDecoder((L1, L2), 1, (8, 1, 6, 6))`` with those
    taps: same parameters, same log-density under the same head."""
    rng = np.random.default_rng(6)
    P = 1 if likelihood == "bernoulli" else 2
    with backend.float64():
        conv = backend.net("ConvDecoder", (1, 1), (3, 2), 8, channels=6, num_layers=2,
                           params_per_pixel=P)
        twin = backend.net("MultiInputDecoder", (3, 2), 1, (8, 1, 6, 6), params_per_pixel=P,
                           seed=1)
        twin = _twin_weights(backend, conv, twin, {
            "branches.0.linear": "body.branches.0.0.linear",
            "branches.1.linear": "body.branches.1.0.linear",
            "joint.linear": "body.joint.0.linear", "convs.0.conv": "body.joint.1.linear",
            "convs.1.conv": "body.joint.2.linear", "head": "head"})
        z1, z2 = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
        x = (rng.random((7, 1)) < 0.5) * 1.0 if P == 1 else rng.integers(0, 256, (7, 1)) / 255
        lik = getattr(backend.lib, likelihood)
        log_p = [backend.numpy(lik(net(backend.array(z1), backend.array(z2))).log_prob(
            backend.array(x))) for net in (conv, twin)]
    np.testing.assert_allclose(log_p[0], log_p[1], rtol=1e-12)


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_one_pixel_pixelcnn_is_its_mlp_twin(backend, likelihood):
    """On a 1 x 1 image mask 'A' hides the only pixel and 'B' keeps the centre tap: the
    PixelCNN is ``x``-free, the gated maps of the latents then a ReLU MLP (the centre taps of
    its latent channels and layers)."""
    rng = np.random.default_rng(7)
    P = 1 if likelihood == "bernoulli" else 2
    with backend.float64():
        dec = _pixelcnn(backend, (1, 1), num_layers=3, channels=5, params_per_pixel=P)
        w = {k: backend.numpy(v) for k, v in _named(backend, dec).items()}
        z1, z2 = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
        x = (rng.random((7, 1)) < 0.5) * 1.0 if P == 1 else rng.integers(0, 256, (7, 1)) / 255

        def gated(v, name):
            h, g = np.split(v @ w[name + ".linear.weight"].T + w[name + ".linear.bias"], 2, -1)
            return h / (1 + np.exp(-g))

        h = np.concatenate([gated(z1, "branches.0"), gated(z2, "branches.1")], -1)  # (7, 2)
        h = np.maximum(h @ w["layers.0.weight"][:, 1:, 1, 1].T + w["layers.0.bias"], 0)
        for i in (1, 2):
            h = np.maximum(h @ w[f"layers.{i}.weight"][:, :, 1, 1].T + w[f"layers.{i}.bias"], 0)
        twin = h @ w["head.weight"][:, :, 0, 0].T + w["head.bias"]
        lik = getattr(backend.lib, likelihood)
        params = dec(backend.array(x), backend.array(z1), backend.array(z2))
        np.testing.assert_allclose(backend.numpy(params), twin, rtol=1e-12, atol=1e-14)
        log_p = backend.numpy(lik(params).log_prob(backend.array(x)))
        np.testing.assert_allclose(log_p, backend.numpy(lik(backend.array(twin)).log_prob(
            backend.array(x))), rtol=1e-12)


def _named(backend, net):
    """``{torch path: array}`` of a network's parameters, either backend (the Equinox
    networks have the torch modules' paths: tuples for ``Sequential`` / ``ModuleList``)."""
    if backend.name == "pyro":
        return dict(net.named_parameters())
    import equinox as eqx
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(net, eqx.is_inexact_array))
    return {".".join(str(p.idx) if hasattr(p, "idx") else p.name for p in path): leaf
            for path, leaf in flat}


def _twin_weights(backend, conv, twin, paths):
    """``twin`` with ``conv``'s weights: each layer's weight (a kernel's centre tap) and bias
    go to the twin's layer at ``paths[layer]``."""
    conv_w = {k: backend.numpy(v) for k, v in _named(backend, conv).items()}
    values = {}
    for src, dst in paths.items():
        weight, bias = conv_w[src + ".weight"], conv_w[src + ".bias"]
        if weight.ndim == 4:
            c = weight.shape[-1] // 2
            weight = weight[:, :, c, c]
        values[dst + ".weight"], values[dst + ".bias"] = weight, bias
    if backend.name == "pyro":
        import torch

        with torch.no_grad():
            for name, p in twin.named_parameters():
                p.copy_(torch.from_numpy(values[name]))
        return twin
    import equinox as eqx

    for name, v in values.items():
        twin = eqx.tree_at(lambda m, name=name: _eqx_at(m, name), twin, backend.array(v))
    return twin


def test_pixelhvae_program_refuses_networks_that_disagree(backend):
    """The PixelHVAE's program checks sizes with the HVAE's own checks, before any sampling:
    a p(z1 | z2) whose z1 is not the decoder's, a prior whose z2 is not the decoder's."""
    L, shape = 4, (3, 2)
    decoder = backend.net("PixelCNNDecoder", shape, (L, L), channels=4, num_layers=1, seed=3)
    x = backend.array(np.zeros((2, 6), np.float32))
    program = importlib.import_module(f"ppl_vae.models.pixelhvae_{backend.name}").pixelhvae_model
    if backend.name == "numpyro":  # (its networks' parameters are registered under a seed)
        program = backend.ppl.handlers.seed(program, 0)
    wrong_z1 = backend.net("ConditionalGaussian", L, L - 1, (8,), seed=2)
    with pytest.raises(ValueError, match=r"z1_prior's latent_dim \(3\) must equal the "
                       r"decoder's z1 size \(4\)"):
        program(x, decoder=decoder, z1_prior=wrong_z1, prior=backend.lib.StandardNormalPrior(L))
    z1_prior = backend.net("ConditionalGaussian", L, L, (8,), seed=2)
    with pytest.raises(ValueError, match=r"prior must have batch_shape \(\) and "
                       r"event_shape \(4,\)"):
        program(x, decoder=decoder, z1_prior=z1_prior, prior=backend.lib.StandardNormalPrior(L + 1))


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("model_name", ["convhvae", "pixelhvae"])
def test_training_lowers_the_loss(backend, model_name):
    """Eight epochs on 300 noisy copies of three 8 x 6 binary prototypes (shallow networks:
    XLA compiles each convolution for seconds): the validation ELBO ends more than 3 nats
    above the uniform model's log-likelihood, -48 ln 2 = -33.3 nats, where an untrained model
    starts (the data's own entropy is about 48 H(0.1) + ln 3 = 16.7 nats)."""
    rng = np.random.default_rng(8)
    protos = rng.random((3, 48)) < 0.5
    x = (protos[rng.integers(0, 3, 400)] ^ (rng.random((400, 48)) < 0.1)).astype(np.float32)
    lib, L, shape = backend.lib, 4, (8, 6)
    shallow = dict(kernel_sizes=(3,), channels=(8,), strides=(2,))
    nets = dict(encoder=backend.net("ConvEncoder", shape, L, seed=0, **shallow),
                z1_encoder=backend.net("ConvEncoder", shape, L, cond_dim=L, hidden_dim=16,
                                       seed=1, **shallow),
                z1_prior=backend.net("ConditionalGaussian", L, L, (16, 16), seed=2),
                decoder=backend.net("ConvDecoder", shape, (L, L), 16, channels=8, num_layers=1,
                                    seed=3)
                if model_name == "convhvae" else
                backend.net("PixelCNNDecoder", shape, (L, L), channels=16, num_layers=2,
                            seed=3))
    prior = backend.net("LearnedVampPrior", nets["encoder"], 10, seed=4)
    model, guide = _programs(backend.name, model_name, nets, prior, lib.bernoulli)
    result = backend.fit(model, guide, x[:300], x[300:], num_epochs=8, batch_size=30,
                         learning_rate=1e-2, warmup_epochs=0)
    valid = [h["valid_elbo"] for h in result.history]
    print(valid)
    assert valid[-1] > -48 * np.log(2) + 3 and valid[-1] > valid[0] + 3, valid


# --------------------------------------------------------------------------------- GPU
def test_gpu_matches_cpu(backend):
    """On a GPU (skipped without one: ``benchmarks/gpu_conv.sh`` runs it on a lent machine),
    the PixelHVAE's and convHVAE's decoders give the CPU's values to float32 accuracy (TF32
    off: it rounds products to 10 bits), and ancestral sampling runs there."""
    if backend.name == "pyro" and not backend.xp.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend.name == "numpyro" and not any(d.platform == "gpu" for d in backend.jax.devices()):
        pytest.skip("no JAX GPU")
    rng = np.random.default_rng(9)
    x = (rng.random((6, D)) < 0.4).astype(np.float32)
    z1, z2 = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((6, 2)).astype(
        np.float32)
    pix = _pixelcnn(backend, params_per_pixel=1)
    conv = backend.net("ConvDecoder", (H, W), (3, 2), 8, channels=8)
    if backend.name == "pyro":
        torch = backend.xp
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            outs = []
            for device in ("cpu", "cuda"):
                pix.to(device), conv.to(device)
                xt, a, b = (torch.as_tensor(v, device=device) for v in (x, z1, z2))
                outs.append([backend.numpy(pix(xt, a, b)), backend.numpy(conv(a, b))])
            sample = backend.lib.sample_pixelcnn(pix, a, b)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
    else:
        jax = backend.jax
        gpu = next(d for d in jax.devices() if d.platform == "gpu")
        outs = []
        with jax.default_matmul_precision("highest"):
            for device in (jax.devices("cpu")[0], gpu):
                xj, a, b = (jax.device_put(v, device) for v in (x, z1, z2))
                p, c = jax.device_put(pix, device), jax.device_put(conv, device)
                outs.append([np.asarray(p(xj, a, b)), np.asarray(c(a, b))])
            sample = backend.lib.sample_pixelcnn(backend.key(0), p, a, b)
    for cpu, gpu_out in zip(*outs):
        np.testing.assert_allclose(gpu_out, cpu, rtol=1e-4, atol=1e-4)
    assert backend.numpy(sample).shape == (6, D)
