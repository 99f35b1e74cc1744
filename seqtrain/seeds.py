"""`seqtrain train --seeds 0 1 2 --run-name NAME`: one run per seed, one after another, then the
table that compares them (`seqtrain.compare`: final and best val, test, seconds, compute per
run, and their mean and std).

Each seed trains a normal run (`train()` as for one run) in `<output-dir>/NAME-seed<k>` with
`--seed k`; its config.yaml names that seed alone, so it reruns that one run. A run already
complete (its test_metrics.json written) is skipped unless --overwrite: the same command, rerun
with --resume auto after a preemption or a crash, skips the finished seeds and continues the one
that stopped. Every rank takes the same seeds in the same order: whether a run is complete is
decided on the main process and broadcast, as a rank's view of a network file system may lag.

One after another rather than in parallel: a run already uses every process of its launch (one
GPU each, or the CPU's cores), and runs sharing a GPU as separate processes would time-share it.
Several small models at once on one GPU are the ensemble work's (`--members`: one stacked model,
about one launch stream for all members).
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

from accelerate import PartialState

from seqtrain.compare import print_group_table
from seqtrain.components.run_paths import RunPaths
from seqtrain.config import RunConfig
from seqtrain.distributed import decided_on_main_process, join_processes
from seqtrain.train import train


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of one seed's run: `cfg` with that seed, its own run name, no --seeds."""
    one = copy.deepcopy(cfg)  # train() settles values into its config; each run gets its own
    one.train.seed, one.train.seeds = seed, ()
    one.train.run_name = f"{cfg.train.run_name}-seed{seed}"
    return one


def train_seeds(cfg: RunConfig) -> list[Path]:
    """Collective: train each seed's run that is not complete yet, in the order of --seeds, and
    print the group's table (main process); returns the run folders."""
    join_processes(cfg)
    main = PartialState().is_main_process
    runs = []
    for seed in cfg.train.seeds:
        one = seed_config(cfg, seed)
        run_dir = one.train.output_dir / str(one.train.run_name)
        if not cfg.train.overwrite and decided_on_main_process(partial(_complete, run_dir)):
            if main:
                print(f"seed {seed}: {run_dir} is complete, skipped", flush=True)
        else:
            train(one)
        runs.append(run_dir)
    if main:
        print_group_table(runs)
    return runs


def _complete(run_dir: Path) -> bool:
    # test_metrics.json is written once the best model's test is done: the run's last result.
    return RunPaths(run_dir).test_metrics.is_file()
