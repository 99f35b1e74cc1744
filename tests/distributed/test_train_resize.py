"""Resume on another number of processes, mid-epoch: real runs (gloo on CPU) killed with
SIGKILL after a mid-epoch checkpoint, resumed on fewer or more processes. The sample ledger
($SEQTRAIN_SAMPLE_LEDGER) proves every sample of the interrupted epoch is trained exactly once
over the two segments, and the one-cycle LR runs on without a jump at the join."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqtrain.components.checkpoint import META_NAME
from seqtrain.data.format import load_manifest
from seqtrain.data.position import LEDGER_ENV, Position
from seqtrain.distributed import seed_resumed_rank
from seqtrain.export import WEIGHTS_NAME
from seqtrain.models.state import WRAPPER_PREFIXES, prefix_free
from support.distributed import cpu_env, launch_argv
from support.processes import kill_when
from support.training import read_jsonl, run_to_end, train_argv

BATCH, LR = 16, 1e-2


def resize_argv(shards: Path, out: Path, processes: int) -> list[str]:
    """A two-epoch one-cycle run on `processes` CPU ranks, checkpointing every 2 steps. The
    reference model is slow enough for a kill to land between two checkpoints of an epoch."""
    start = launch_argv(processes) if processes > 1 else [sys.executable, "-m", "seqtrain"]
    flags = train_argv(shards, out, "job", "--wandb-mode", "disabled")
    return [
        *start, *flags, "--model", "reference", "--epochs", "2", "--batch-size", str(BATCH),
        "--sched", "onecycle", "--checkpoint-every", "2", "--eval-batch-size", "250",
    ]  # fmt: skip


def mid_first_epoch(checkpoint: Path) -> bool:
    try:
        meta = json.loads((checkpoint / META_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return meta["epoch"] == 0 and meta["samples_done"] > 0


def ledger(folder: Path) -> list[dict]:
    return [line for path in sorted(folder.glob("rank*.jsonl")) for line in read_jsonl(path)]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("old, new", [(2, 1), (2, 3), (1, 2)])
def test_resume_on_other_processes_trains_each_sample_once(
    tiny_shards: Path, tmp_path: Path, old: int, new: int
) -> None:
    lines = tmp_path / "ledger"
    env = cpu_env(**{LEDGER_ENV: str(lines)})
    run = tmp_path / "job"
    last = run / "checkpoints" / "last"
    kill_when(resize_argv(tiny_shards, tmp_path, old), lambda: mid_first_epoch(last), env=env)
    position = Position.from_json(json.loads((last / META_NAME).read_text()))
    assert position.epoch == 0 and position.steps_done > 0
    assert not any(key.startswith(WRAPPER_PREFIXES) for key in load_file(last / WEIGHTS_NAME))
    done = run_to_end([*resize_argv(tiny_shards, tmp_path, new), "--resume", "auto"], env)
    assert f"the global batch changes from {old * BATCH} to {new * BATCH}" in done
    assert f"at epoch 1, batch {position.steps_done} " in done

    # What was trained: segment 0 up to the checkpoint (later batches died with the kill),
    # then all of segment 1 on the new processes.
    entries = ledger(lines)
    first = [e for e in entries if (e["epoch"], e["segment"]) == (0, 0)]
    kept = [e for e in first if e["batch"] < position.steps_done]
    assert len(kept) == old * position.steps_done  # every old rank, every step before the save
    second = [e for e in entries if (e["epoch"], e["segment"]) == (0, 1)]
    assert second and all(e["world_size"] == new for e in second)
    assert len({e["batch"] for e in second}) * new == len(second)  # same steps on every rank
    samples = [s for e in kept + second for s in e["samples"]]
    assert len(samples) == len(set(samples)), "a sample of the interrupted epoch trained twice"
    epoch_samples = position.epoch_samples
    assert set(samples) <= set(range(epoch_samples))
    assert epoch_samples - len(samples) < new * BATCH  # fewer than one global batch left out

    # The LR of every global step, in order: rises to --lr, falls to the minimum, no jump.
    by_step = {}
    for e in kept + second + [e for e in entries if e["epoch"] == 1]:
        by_step.setdefault((e["epoch"], e["segment"], e["batch"]), set()).add(e["lr"])
    assert all(len(lrs) == 1 for lrs in by_step.values()), "ranks disagree on the LR"
    lrs = [lrs.pop() for _, lrs in sorted(by_step.items())]
    assert lrs[0] == pytest.approx(LR / 25)
    peak = lrs.index(max(lrs))
    assert lrs[: peak + 1] == sorted(lrs[: peak + 1])
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert max(lrs) == pytest.approx(LR, rel=0.05)
    join = position.steps_done
    jumps = [abs(b - a) for a, b in itertools.pairwise(lrs)]
    assert jumps[join - 1] <= 1.5 * max(jumps[: join - 1] + jumps[join:])

    # The run finished with sane metrics, each epoch once.
    epochs = read_jsonl(run / "metrics.jsonl")
    assert [(e["epoch"], e["num_processes"]) for e in epochs] == [(1, new), (2, new)]
    assert all(math.isfinite(e["val_loss"]) and e["val_loss"] < 3 * math.log(11) for e in epochs)
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["count"] == load_manifest(tiny_shards).num_samples("test")
    assert 0 < test["exact_match"] <= 1


def test_wrapper_prefixes_come_off_checkpoint_keys() -> None:
    weight = torch.zeros(1)
    state = {"module.head.weight": weight, "_orig_mod.conv.bias": weight, "fc.weight": weight}
    assert list(prefix_free(state)) == ["head.weight", "conv.bias", "fc.weight"]


def test_a_new_rank_gets_a_deterministic_seed_of_its_own() -> None:
    def draw(process_index: int, step: int = 10, seed: int = 0) -> torch.Tensor:
        seed_resumed_rank(seed, process_index, step)
        return torch.rand(4)

    with torch.random.fork_rng(devices=[]):
        assert torch.equal(draw(2), draw(2))
        assert not torch.equal(draw(2), draw(3))
        assert not torch.equal(draw(2), draw(2, step=11))
        assert not torch.equal(draw(2), draw(2, seed=1))
