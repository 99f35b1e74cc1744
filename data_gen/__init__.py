"""data_gen: pre-render augmented, stitched MNIST digit sequences into WebDataset shards."""

from seqtrain.version import __version__  # one distribution, one version

__all__ = ["__version__"]
