"""seqtrain: train multi-head CNNs on stitched MNIST digit sequences from WebDataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seqtrain.version import __version__

if TYPE_CHECKING:
    from torch import nn

__all__ = ["__version__", "load_model"]


def load_model(path: str | Path) -> nn.Module:
    """The trained model (eval mode, CPU) from an export, checkpoint or run folder; see
    `seqtrain.export.load_model`. Imported on use, so `import seqtrain` stays torch-free."""
    from seqtrain.export import load_model as load

    return load(path)
