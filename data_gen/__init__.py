"""data_gen: pre-render augmented, stitched MNIST digit sequences into WebDataset shards."""

__version__ = "0.1.0"
