"""The loader tests' shard set, shared by the stream and staged tests of this folder."""

from __future__ import annotations

import pytest

from seqtrain.data.format import Manifest
from support.loaders import loader_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """support.loaders.loader_manifest in a fresh folder: 7 uneven shards of id-coded images."""
    return loader_manifest(tmp_path_factory.mktemp("shards"))
