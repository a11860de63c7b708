"""Convolutional networks of the VampPrior paper's convHVAE and PixelHVAE (Equinox).

Mirror of :mod:`ppl_vae.pyro.conv`: same classes, same constructor arguments plus a
keyword-only ``rng_key`` for the initial weights, same layer sizes (the reference's
``convHVAE_2level.py`` / ``PixelHVAE_2level.py``), same deviations from the reference (no
BatchNorm in the PixelCNN, mask ``'B'`` on its latent maps; see the Pyro module's docstring
for why and what they change).

- :class:`ConvEncoder` -- q(z2 | x) and q(z1 | x, z2) (gated convolutions, a linear head);
- :class:`ConvDecoder` -- p(x | z1, z2) of the convHVAE (gated convolutions);
- :class:`PixelCNNDecoder` -- p(x | z1, z2) of the PixelHVAE (masked convolutions,
  autoregressive over pixels); :func:`sample_pixelcnn` draws from it pixel by pixel.

Networks take and return flat rows, ``(..., H * W)`` in raster order, as the MLPs do.
Parameters are laid out as the torch modules' (``convs[i].conv.weight`` of shape
``(out, in, k, k)``, ``head.weight``), so weights copy across by path; inside, activations
are NHWC (``lax.conv_general_dilated``'s fast layout on a CPU) and the weights are
transposed to HWIO per call (a few kilobytes). A mask is a NumPy constant built from static
fields, never a parameter: ``eqx_module`` registers only what is trained.
"""

import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random

from ppl_vae import _conv
from ppl_vae._checks import check_dims, check_int
from ppl_vae.numpyro.likelihoods import bernoulli
from ppl_vae.numpyro.nets import GatedDense, _check_key, _Linear

__all__ = ["GatedConv2d", "MaskedConv2d", "ConvEncoder", "ConvDecoder", "PixelCNNDecoder",
           "sample_pixelcnn"]

_NHWC = ("NHWC", "HWIO", "NHWC")


def _numpy_rng(rng_key):
    """A NumPy generator seeded with the bits of ``rng_key``: the initial weights' source.
    ``jax.random`` outside ``jit`` compiles one program per array shape (a second or so each
    on a CPU, about 20 s for the convHVAE's networks); NumPy draws them at once."""
    key = _check_key(rng_key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def _subkeys(rng_key, num):
    """``num`` raw ``jax.random`` keys (``uint32[2]`` each) drawn from ``rng_key``'s bits."""
    return _numpy_rng(rng_key).integers(0, 2**32, (num, 2), dtype=np.uint32)


def _array(x):
    return jnp.asarray(x, dtype=jnp.result_type(float))  # float32, or float64 under x64


def _conv_nhwc(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                    dimension_numbers=_NHWC)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_loop_safe(x, w, stride, padding):
    """``_conv_nhwc`` with its weight gradient written as a channel-last convolution.

    XLA's CPU backend compiles the weight gradient JAX derives for a convolution (a
    convolution whose batch and feature dimensions are swapped) to a naive loop nest when it
    sits in a loop body, and NumPyro's jitted epoch is a ``fori_loop`` over steps: measured
    here, 45 s to compile and 100x slower to run than outside the loop (jax-ml/jax#12868, open
    since 2022; a channel-last convolution is unaffected). So the gradient is computed as that
    channel-last convolution of the transposed operands, ``dW = conv(x^T, g^T)`` with the image
    ``(C_in, H, W, N)`` and the output gradient ``(h, w, N, C_out)`` as its kernel, dilated
    by the stride: the same numbers and, outside loops, the same speed. The input gradient is
    XLA's own (unaffected). Forward-mode differentiation is not supported (none is used).
    """
    return _conv_nhwc(x, w, stride, padding)


def _conv_loop_safe_fwd(x, w, stride, padding):
    return _conv_nhwc(x, w, stride, padding), (x, w)


def _conv_loop_safe_bwd(stride, padding, res, g):
    x, w = res
    dx = jax.vjp(lambda x: _conv_nhwc(x, w, stride, padding), x)[1](g)[0]
    k = w.shape[0]
    # high padding that makes the output k x k: the forward's last window ends there
    high = [(n_out - 1) * stride + k - n_in - padding
            for n_out, n_in in zip(g.shape[1:3], x.shape[1:3])]
    dw = lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1),
        [(padding, hi) for hi in high], rhs_dilation=(stride, stride),
        dimension_numbers=_NHWC)  # (C_in, k, k, C_out)
    return dx, jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_conv_loop_safe.defvjp(_conv_loop_safe_fwd, _conv_loop_safe_bwd)


def _conv2d(x, weight, bias, stride, padding):
    """``x`` NHWC, ``weight`` (out, in, k, k) as torch stores it. On a CPU the weight
    gradient avoids XLA's slow path for convolutions in loops (``_conv_loop_safe``)."""
    w = jnp.transpose(weight, (2, 3, 1, 0))  # HWIO
    conv = _conv_loop_safe if jax.default_backend() == "cpu" else _conv_nhwc
    return conv(x, w, stride, padding) + bias


class _Conv2d(eqx.Module):
    """``torch.nn.Conv2d`` with its default initialisation, U(-b, b), b = 1 / sqrt(fan_in),
    for weight and bias; padding ``kernel_size // 2``."""

    weight: jax.Array
    bias: jax.Array
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, *, rng_key):
        rng = _numpy_rng(rng_key)
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = _array(rng.uniform(-bound, bound, (out_channels, in_channels,
                                                         kernel_size, kernel_size)))
        self.bias = _array(rng.uniform(-bound, bound, out_channels))
        self.stride, self.padding = int(stride), kernel_size // 2

    def __call__(self, x):
        return _conv2d(x, self.weight, self.bias, self.stride, self.padding)


@eqx.filter_jit
def _compiled(module, *inputs):
    """``module._apply(*inputs)`` compiled as one program. Outside ``jit`` (a model checked
    on data, the figures) JAX would otherwise compile every convolution of the network on its
    own (a few tenths of a second each on a CPU); inside ``jit`` this is inlined."""
    return module._apply(*inputs)


def _to_images(x, image_shape):
    """``(..., H * W)`` -> NHWC ``(M, H, W, 1)`` and the leading shape ``(...)``."""
    return x.reshape(-1, *image_shape, 1), x.shape[:-1]


class GatedConv2d(eqx.Module):
    """Gated convolution ``h = conv_h(x) * sigmoid(conv_g(x))`` as one convolution with
    ``2 * out_channels`` outputs; NHWC ``(N, H, W, C)`` ->
    ``(N, ceil(H / stride), ceil(W / stride), out_channels)``."""

    conv: _Conv2d

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, *, rng_key=None):
        self.conv = _Conv2d(in_channels, 2 * out_channels, kernel_size, stride, rng_key=rng_key)

    def __call__(self, x):
        h, gate = jnp.split(self.conv(x), 2, axis=-1)
        return h * jax.nn.sigmoid(gate)


class MaskedConv2d(eqx.Module):
    """Masked convolution of a PixelCNN: mask ``'A'`` (a pixel never sees itself) or ``'B'``;
    the last ``conditioning_channels`` input channels take ``'B'``. NHWC in and out; weights
    He-normal over the kept taps, biases zero. See :class:`ppl_vae.pyro.MaskedConv2d`.

    Example::

        >>> layer = MaskedConv2d(1, 8, mask_type="A", rng_key=random.PRNGKey(0))
        >>> layer(jnp.ones((2, 5, 4, 1))).shape
        (2, 5, 4, 8)
    """

    weight: jax.Array
    bias: jax.Array
    kernel_size: int = eqx.field(static=True)
    mask_type: str = eqx.field(static=True)
    conditioning_channels: int = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, kernel_size=3, mask_type="B",
                 conditioning_channels=0, *, rng_key=None):
        self.mask_type = _conv.check_mask_type(mask_type)
        self.kernel_size = check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}.")
        self.conditioning_channels = int(conditioning_channels)
        args = (kernel_size, mask_type, in_channels, conditioning_channels)
        std = math.sqrt(2.0 / _conv.masked_fan_in(*args))
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = _array(std * _numpy_rng(rng_key).standard_normal(shape)
                             * _conv.causal_mask(*args))
        self.bias = _array(np.zeros(out_channels))

    @property
    def mask(self):
        return _conv.causal_mask(self.kernel_size, self.mask_type, self.weight.shape[1],
                                 self.conditioning_channels)

    def __call__(self, x):
        w = self.weight * self.mask.astype(self.weight.dtype)
        return _conv2d(x, w, self.bias, 1, self.kernel_size // 2)


class ConvEncoder(eqx.Module):
    """Diagonal Gaussian of an image and, optionally, a latent: q(z2 | x) and q(z1 | x, z2) of
    the convHVAE. Arguments as :class:`ppl_vae.pyro.ConvEncoder`, plus ``rng_key``.

    Example::

        >>> q_z1 = ConvEncoder((28, 20), 40, cond_dim=40, kernel_sizes=(3,) * 5,
        ...                    rng_key=random.PRNGKey(0))       # q(z1 | x, z2)
        >>> loc, scale = q_z1(jnp.ones((5, 560)), jnp.zeros((3, 5, 40)))
        >>> loc.shape
        (3, 5, 40)
    """

    convs: tuple
    cond: object
    joint: object
    head: _Linear
    image_shape: tuple = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    input_dim: int = eqx.field(static=True)
    input_dims: tuple = eqx.field(static=True)
    logvar_min: float = eqx.field(static=True)
    logvar_max: float = eqx.field(static=True)

    def __init__(self, image_shape, latent_dim=40, cond_dim=None, hidden_dim=300,
                 kernel_sizes=_conv.Z2_ENCODER["kernel_sizes"],
                 channels=_conv.Z2_ENCODER["channels"], strides=_conv.Z2_ENCODER["strides"],
                 logvar_min=-6.0, logvar_max=2.0, *, rng_key=None):
        self.image_shape = _conv.check_image_shape(image_shape)
        kernel_sizes, channels, strides = _conv.check_layers(kernel_sizes, channels, strides)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.input_dim = self.image_shape[0] * self.image_shape[1]
        self.input_dims = (self.input_dim,) if cond_dim is None else (
            self.input_dim, check_int("cond_dim", cond_dim))
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        keys = _subkeys(rng_key, len(channels) + 3)
        in_channels = (1,) + channels[:-1]
        self.convs = tuple(GatedConv2d(i, o, k, s, rng_key=key) for i, o, k, s, key in
                           zip(in_channels, channels, kernel_sizes, strides, keys))
        h, w = _conv.feature_shape(self.image_shape, strides)
        features = channels[-1] * h * w
        if cond_dim is None:
            self.cond = self.joint = None
            head_in = features
        else:
            self.cond = GatedDense(cond_dim, features, rng_key=keys[-3])
            self.joint = GatedDense(2 * features, check_int("hidden_dim", hidden_dim),
                                    rng_key=keys[-2])
            head_in = hidden_dim
        self.head = _Linear(head_in, 2 * self.latent_dim, rng_key=keys[-1])

    def __call__(self, x, *cond):
        return _compiled(self, x, *cond)

    def _apply(self, x, *cond):
        if len(cond) != len(self.input_dims) - 1:
            raise TypeError(f"expected {len(self.input_dims)} input(s); got {1 + len(cond)}.")
        _conv.check_pixels(x, self.input_dim)
        h, batch = _to_images(x, self.image_shape)
        for conv in self.convs:
            h = conv(h)
        # flattened channel-major, as torch's (M, C, h, w).flatten(1)
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(*batch, -1)
        if cond:
            h, c = jnp.broadcast_arrays(h, self.cond(cond[0]))
            h = self.joint(jnp.concatenate([h, c], axis=-1))
        loc, logvar = jnp.split(self.head(h), 2, axis=-1)
        return loc, jnp.exp(0.5 * jnp.clip(logvar, self.logvar_min, self.logvar_max))


class ConvDecoder(eqx.Module):
    """p(x | z1, z2) of the convHVAE, ``(..., P * H * W)``. Arguments as
    :class:`ppl_vae.pyro.ConvDecoder`, plus ``rng_key``."""

    branches: tuple
    joint: GatedDense
    convs: tuple
    head: _Conv2d
    image_shape: tuple = eqx.field(static=True)
    input_dims: tuple = eqx.field(static=True)
    output_dim: int = eqx.field(static=True)
    params_per_pixel: int = eqx.field(static=True)

    def __init__(self, image_shape, input_dims=(40, 40), hidden_dim=300, channels=64,
                 num_layers=4, params_per_pixel=1, *, rng_key=None):
        self.image_shape = _conv.check_image_shape(image_shape)
        self.input_dims = check_dims("input_dims", input_dims)
        self.output_dim = self.image_shape[0] * self.image_shape[1]
        self.params_per_pixel = check_int("params_per_pixel", params_per_pixel)
        hidden_dim, channels = check_int("hidden_dim", hidden_dim), check_int("channels", channels)
        num_layers = check_int("num_layers", num_layers)
        keys = _subkeys(rng_key, len(self.input_dims) + num_layers + 2)
        self.branches = tuple(GatedDense(d, hidden_dim, rng_key=k)
                              for d, k in zip(self.input_dims, keys))
        self.joint = GatedDense(len(self.input_dims) * hidden_dim, self.output_dim,
                                rng_key=keys[len(self.input_dims)])
        self.convs = tuple(GatedConv2d(1 if i == 0 else channels, channels, 3, rng_key=k)
                           for i, k in enumerate(keys[len(self.input_dims) + 1:-1]))
        self.head = _Conv2d(channels, self.params_per_pixel, 1, rng_key=keys[-1])

    def __call__(self, *latents):
        return _compiled(self, *latents)

    def _apply(self, *latents):
        _conv.check_latents(self.input_dims, latents)
        hs = jnp.broadcast_arrays(*(b(z) for b, z in zip(self.branches, latents)))
        h, batch = _to_images(self.joint(jnp.concatenate(hs, axis=-1)), self.image_shape)
        for conv in self.convs:
            h = conv(h)
        return jnp.transpose(self.head(h), (0, 3, 1, 2)).reshape(*batch, -1)


class PixelCNNDecoder(eqx.Module):
    """p(x | z1, z2) of the PixelHVAE, autoregressive over the pixels in raster order:
    ``decoder(x, z1, z2)`` gives every :math:`p(x_i \\mid x_{<i}, z)`'s parameters,
    ``(..., P * H * W)``. Arguments as :class:`ppl_vae.pyro.PixelCNNDecoder`, plus
    ``rng_key``."""

    autoregressive = True  # the decoder reads x: the model calls decoder(x, z1, z2)

    branches: tuple
    layers: tuple
    head: _Conv2d
    image_shape: tuple = eqx.field(static=True)
    input_dims: tuple = eqx.field(static=True)
    output_dim: int = eqx.field(static=True)
    params_per_pixel: int = eqx.field(static=True)
    receptive_radius: int = eqx.field(static=True)

    def __init__(self, image_shape, input_dims=(40, 40), channels=64, num_layers=8,
                 kernel_size=3, params_per_pixel=1, *, rng_key=None):
        self.image_shape = _conv.check_image_shape(image_shape)
        self.input_dims = check_dims("input_dims", input_dims)
        self.output_dim = self.image_shape[0] * self.image_shape[1]
        self.params_per_pixel = check_int("params_per_pixel", params_per_pixel)
        num_layers, channels = check_int("num_layers", num_layers), check_int("channels", channels)
        n = len(self.input_dims)
        keys = _subkeys(rng_key, n + num_layers + 1)
        self.branches = tuple(GatedDense(d, self.output_dim, rng_key=k)
                              for d, k in zip(self.input_dims, keys))
        self.layers = tuple(
            [MaskedConv2d(1 + n, channels, kernel_size, "A", conditioning_channels=n,
                          rng_key=keys[n])]
            + [MaskedConv2d(channels, channels, kernel_size, "B", rng_key=k)
               for k in keys[n + 1:-1]])
        self.head = _Conv2d(channels, self.params_per_pixel, 1, rng_key=keys[-1])
        self.receptive_radius = _conv.receptive_radius(num_layers, kernel_size)

    def latent_maps(self, *latents):
        """The latents as image-sized maps, ``(..., H, W, len(input_dims))`` (NHWC)."""
        _conv.check_latents(self.input_dims, latents)
        maps = jnp.broadcast_arrays(*(b(z) for b, z in zip(self.branches, latents)))
        return jnp.stack(maps, axis=-1).reshape(*maps[0].shape[:-1], *self.image_shape, -1)

    def _body(self, h):
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return h

    def __call__(self, x, *latents):
        return _compiled(self, x, *latents)

    def _apply(self, x, *latents):
        _conv.check_pixels(x, self.output_dim)
        maps = self.latent_maps(*latents)  # (..., H, W, n)
        batch = jnp.broadcast_shapes(x.shape[:-1], maps.shape[:-3])
        images = jnp.broadcast_to(x, (*batch, x.shape[-1])).reshape(-1, *self.image_shape, 1)
        maps = jnp.broadcast_to(maps, (*batch, *maps.shape[-3:])).reshape(-1, *maps.shape[-3:])
        out = self.head(self._body(jnp.concatenate([images, maps], axis=-1)))
        return jnp.transpose(out, (0, 3, 1, 2)).reshape(*batch, -1)  # (..., P * H * W)

    def window(self, row, col):
        """``(top, left, (h, w), (i, j))``: the window :func:`sample_pixelcnn` computes pixel
        ``(row, col)`` on, ``min(R + 1, H) x min(2R + 1, W)`` pixels from ``(top, left)``, and
        the pixel's place in it (see :meth:`ppl_vae.pyro.PixelCNNDecoder.window`). ``row``
        and ``col`` may be traced integers; the size is static."""
        (H, W), r = self.image_shape, self.receptive_radius
        h, w = min(r + 1, H), min(2 * r + 1, W)
        top = jnp.clip(row - r, 0, H - h)
        left = jnp.clip(col - r, 0, W - w)
        return top, left, (h, w), (row - top, col - left)

    def window_params(self, images, maps, row, col):
        """The parameters ``(N, P)`` of pixel ``(row, col)`` of a window (:meth:`window`) of
        the NHWC images ``(N, h, w, 1)`` and latent maps ``(N, h, w, n)``: the same values as
        ``decoder(x, z1, z2)`` there (see :meth:`ppl_vae.pyro.PixelCNNDecoder.window_params`)."""
        h = self._body(jnp.concatenate([images, maps], axis=-1))
        h = lax.dynamic_slice(h, (0, row, col, 0), (len(h), 1, 1, h.shape[-1]))
        return self.head(h).reshape(len(h), -1)


def sample_pixelcnn(rng_key, decoder, *latents, likelihood=bernoulli):
    """Ancestral samples of a :class:`PixelCNNDecoder`, pixel by pixel in raster order, all N
    images at once: one jitted ``lax.fori_loop`` over the ``H * W`` pixels, each step on the
    window that pixel depends on (:meth:`PixelCNNDecoder.window`; see
    :func:`ppl_vae.pyro.sample_pixelcnn`).

    :param rng_key: ``jax.random.PRNGKey``; pixel i draws with ``fold_in(rng_key, i)``.
    :param decoder: a :class:`PixelCNNDecoder` (with trained values in it, e.g. from
        ``eqx_module`` under ``handlers.substitute``).
    :param latents: ``z1, z2``, each ``(N, L_i)``.
    :param likelihood: the decoder's head, e.g. :func:`~ppl_vae.numpyro.bernoulli`.
    :returns: ``(N, H * W)`` images.
    """
    _conv.check_head(decoder, likelihood)
    if any(jnp.ndim(z) != 2 for z in latents):
        raise ValueError(f"latents must be (N, L) each; got {[jnp.shape(z) for z in latents]}.")
    H, W = decoder.image_shape

    @jax.jit
    def run(key, decoder, latents):
        maps = decoder.latent_maps(*latents)  # (N, H, W, n)
        canvas = jnp.zeros(maps.shape[:-1] + (1,), maps.dtype)  # (N, H, W, 1)

        def step(k, canvas):
            row, col = k // W, k % W
            top, left, (h, w), (i, j) = decoder.window(row, col)

            def window(a):
                return lax.dynamic_slice(a, (0, top, left, 0), (len(a), h, w, a.shape[-1]))

            params = decoder.window_params(window(canvas), window(maps), i, j)
            pixel = likelihood(params).sample(random.fold_in(key, k)).astype(canvas.dtype)
            return lax.dynamic_update_slice(canvas, pixel.reshape(-1, 1, 1, 1), (0, row, col, 0))

        return lax.fori_loop(0, H * W, step, canvas).reshape(len(maps), H * W)

    return run(rng_key, decoder, tuple(latents))
