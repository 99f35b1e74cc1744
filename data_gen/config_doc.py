"""`seqtrain-data generate`'s config table (docs/configuration.md), generated from `GenConfig`."""

from __future__ import annotations

from data_gen.config import GenConfig
from seqtrain.common.config_doc import ConfigBlock, main

GENERATE_TABLE = ConfigBlock(
    GenConfig, "generate", "`seqtrain-data generate`", "data_gen.config_doc"
)

if __name__ == "__main__":
    raise SystemExit(main(GENERATE_TABLE))
