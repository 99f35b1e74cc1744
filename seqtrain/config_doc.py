"""`seqtrain train`'s config table (docs/configuration.md), generated from `RunConfig`."""

from __future__ import annotations

from seqtrain.common.config_doc import ConfigBlock, main
from seqtrain.config import RunConfig

TRAIN_TABLE = ConfigBlock(
    RunConfig, "train", "`seqtrain train` (and `--config run.yaml`)", "seqtrain.config_doc"
)

if __name__ == "__main__":
    raise SystemExit(main(TRAIN_TABLE))
