"""The datasets, as ``ppl_vae.data``: the public names of :mod:`ppl_vae.datasets`, re-exported.

``from ppl_vae.data import load_dataset`` and ``from ppl_vae.datasets import load_dataset`` give
the same function; the package :mod:`ppl_vae.datasets` holds the registry, the loaders, the
readers and the downloads, each in its own module.
"""

from ppl_vae.datasets import (
    BINARIZATIONS,
    DATA_SEED,
    DATASET_NAMES,
    DATASETS,
    INPUT_TYPES,
    LIKELIHOODS,
    STATIC_MNIST_SHA256,
    STATIC_MNIST_URL,
    DatasetSpec,
    DataSplits,
    PackedFile,
    SourceFile,
    binarize,
    check_binary,
    dataset_spec,
    default_cache_dir,
    download_dataset,
    download_static_mnist,
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
    read_idx,
    subset_indices,
)

# Module constants of ppl_vae.data that never were in __all__, kept for code that used them.
from ppl_vae.datasets._splits import IMAGE_SHAPE as IMAGE_SHAPE
from ppl_vae.datasets._splits import NUM_FEATURES as NUM_FEATURES

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
