"""`seqtrain <command> [flags]`: dispatch on the first word; each command parses its own flags."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from seqtrain.common.errors import report_user_errors
from seqtrain.common.subcommands import Commands, dispatch

PROG = "seqtrain"


def _train(argv: list[str]) -> None:
    # A stop signal during the seconds of start-up is recorded, never fatal (a cluster sends
    # it at any moment); imports are here so `seqtrain --help` and flag errors stay fast.
    from seqtrain.common.stop_signals import STOP_FLAG, record_from_start, stop_signals

    record_from_start()
    try:
        from seqtrain.common.cliparse import parse_config
        from seqtrain.config import RunConfig

        cfg = parse_config(
            RunConfig, argv, prog=f"{PROG} train", description=RunConfig.__doc__ or ""
        )
        STOP_FLAG.keep_only(stop_signals(cfg.preempt.preempt_signal))
        from seqtrain.distributed import peer_failures_reported
        from seqtrain.seeds import train_seeds
        from seqtrain.train import train

        with peer_failures_reported():
            if cfg.train.seeds:
                train_seeds(cfg)
            else:
                train(cfg)
    finally:
        STOP_FLAG.restore()


def _module_command(name: str) -> Callable[[list[str]], None]:
    """The command `seqtrain.<name>.command(argv)`, imported only when it runs."""

    def run(argv: list[str]) -> None:
        importlib.import_module(f"seqtrain.{name}").command(argv)

    return run


COMMANDS: Commands = {
    "train": (_train, "train a model on seqtrain-data shards"),
    "evaluate": (_module_command("evaluate"), "metrics of a trained model on a split of shards"),
    "predict": (_module_command("predict"), "read the digits in image files"),
    "report": (_module_command("report"), "draw a run's curves as PNGs, or compare several runs"),
    "export": (_module_command("export"), "write the best weights for deployment"),
}


@report_user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    dispatch(PROG, COMMANDS, argv)
