"""seqtrain: train multi-head CNNs on stitched MNIST digit sequences from WebDataset shards."""

__version__ = "0.1.0"
