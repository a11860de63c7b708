"""What the convolutional networks of both backends share, in NumPy: argument checks, the
reference's layer sizes, feature-map sizes, the PixelCNN's masks and its sampling window.

:mod:`ppl_vae.pyro.conv` and :mod:`ppl_vae.numpyro.conv` build the same networks from these, so
that a shape, a mask or an error message is written once.
"""

import numpy as np

from ppl_vae._checks import check_dims

#: the reference's q(z2 | x) (convHVAE_2level.py): five gated convolutions, kernels 7-3-5-3-3
Z2_ENCODER = dict(kernel_sizes=(7, 3, 5, 3, 3), channels=(32, 32, 64, 64, 6),
                  strides=(1, 2, 1, 2, 1))
#: the reference's q(z1 | x, z2): the same channels and strides with 3 x 3 kernels throughout
Z1_ENCODER = dict(kernel_sizes=(3, 3, 3, 3, 3), channels=(32, 32, 64, 64, 6),
                  strides=(1, 2, 1, 2, 1))


def check_image_shape(image_shape):
    """``(H, W)``, two positive ints, as a tuple."""
    shape = check_dims("image_shape", image_shape)
    if len(shape) != 2:
        raise ValueError(f"image_shape must be (height, width); got {image_shape!r}.")
    return shape


def check_layers(kernel_sizes, channels, strides):
    kernel_sizes = check_dims("kernel_sizes", kernel_sizes)
    channels = check_dims("channels", channels)
    strides = check_dims("strides", strides)
    if not len(kernel_sizes) == len(channels) == len(strides):
        raise ValueError(
            f"kernel_sizes, channels and strides must have one entry per layer; got "
            f"{len(kernel_sizes)}, {len(channels)} and {len(strides)}."
        )
    if any(k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"kernel_sizes must be odd (centred, 'same' padding); got {kernel_sizes}.")
    return kernel_sizes, channels, strides


def feature_shape(image_shape, strides):
    """(h, w) after convolutions with padding ``k // 2`` and these strides: ``ceil(H / s)``
    per layer (28 x 28 -> 7 x 7 and 28 x 20 -> 7 x 5 for the reference's strides 1-2-1-2-1,
    the reference's ``h_size`` 294 and 210 with its 6 channels)."""
    h, w = image_shape
    for s in strides:
        h, w = -(-h // s), -(-w // s)
    return h, w


def check_mask_type(mask_type):
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B'; got {mask_type!r}.")
    return mask_type


def causal_mask(kernel_size, mask_type, in_channels, conditioning_channels=0):
    """The ``(1, in_channels, k, k)`` 0/1 mask of a masked convolution (van den Oord et al.
    2016): taps above the centre row and left of the centre are kept; mask ``'B'`` keeps the
    centre too, ``'A'`` does not (a pixel must not see itself). The last
    ``conditioning_channels`` input channels always take ``'B'``: they are latent maps, not
    pixels, so a pixel may see its own position in them."""
    mask = np.ones((1, in_channels, kernel_size, kernel_size))
    c = kernel_size // 2
    mask[:, :, c + 1:, :] = 0  # rows below the centre
    mask[:, :, c, c + 1:] = 0  # right of the centre
    if mask_type == "A":
        mask[:, :in_channels - conditioning_channels, c, c] = 0
    return mask


def masked_fan_in(kernel_size, mask_type, in_channels, conditioning_channels=0):
    """Input taps a masked convolution's output actually sums over (its He-init fan-in)."""
    return int(causal_mask(kernel_size, mask_type, in_channels, conditioning_channels).sum())


def receptive_radius(num_layers, kernel_size):
    """R: a stack of ``num_layers`` masked ``k x k`` convolutions sees at most R rows up and R
    columns to either side of a pixel, with ``R = num_layers * (k // 2)``."""
    return num_layers * (kernel_size // 2)


def check_latents(input_dims, latents):
    """The decoders' inputs: one array per entry of ``input_dims``, each ``(..., L_i)``."""
    if len(latents) != len(input_dims):
        raise TypeError(f"expected {len(input_dims)} latent input(s); got {len(latents)}.")
    for i, (z, size) in enumerate(zip(latents, input_dims)):
        if tuple(z.shape[-1:]) != (size,):
            raise ValueError(
                f"latent input {i} must have shape (..., {size}); got {tuple(z.shape)}."
            )


def check_pixels(x, num_features):
    if tuple(x.shape[-1:]) != (num_features,):
        raise ValueError(
            f"x must have shape (..., {num_features}) (H * W pixels); got {tuple(x.shape)}."
        )


def check_head(decoder, likelihood):
    """The likelihood reads as many parameters per pixel as the decoder gives."""
    want = getattr(likelihood, "params_per_pixel", None)
    if want is not None and want != decoder.params_per_pixel:
        raise ValueError(
            f"likelihood takes {want} parameter(s) per pixel but the decoder gives "
            f"{decoder.params_per_pixel} (its params_per_pixel)."
        )


__all__ = ["Z2_ENCODER", "Z1_ENCODER", "check_image_shape", "check_layers", "feature_shape",
           "check_mask_type", "causal_mask", "masked_fan_in", "receptive_radius",
           "check_latents", "check_pixels", "check_head"]
