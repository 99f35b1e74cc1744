"""--ema-decay: the weight average's arithmetic, its checkpointing, and that the trainer scores,
tests and exports the average rather than the live weights."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from seqtrain.cli import main
from seqtrain.components.weight_average import AVERAGE_NAME, WeightAverage
from support.distributed import assert_ranks_agree, cpu_env, launch_argv
from support.inference import evaluate_argv
from support.training import read_jsonl, run_in_process, train_argv


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def nudge(model: nn.Module, amount: float) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(amount)
        model[1].running_mean.add_(amount)
        model[1].num_batches_tracked.add_(1)


def test_average_follows_the_warmed_up_decay() -> None:
    model = small_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.99)
    nudge(model, 1.0)
    average.update()  # decay min(0.99, 1/10): the average moves 90 % of the way
    expected = start["0.weight"] + 0.9 * 1.0
    assert torch.allclose(average.state["0.weight"], expected)
    assert torch.allclose(average.state["1.running_mean"], start["1.running_mean"] + 0.9)
    assert average.state["1.num_batches_tracked"].item() == 1  # counters are copied
    for _ in range(2000):
        average.update()
    assert average.current_decay() == 0.99  # the warm-up is over
    assert torch.allclose(average.state["0.weight"], model.state_dict()["0.weight"])


def test_swapped_in_scores_the_average_and_gives_the_weights_back() -> None:
    model = small_model()
    average = WeightAverage(model, decay=0.5)
    nudge(model, 2.0)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError), average.swapped_in(model) as scored:
        assert scored.state_dict()["0.bias"].equal(average.state["0.bias"])
        assert not scored.state_dict()["0.bias"].equal(live["0.bias"])
        raise RuntimeError("an error inside the block")
    for key, value in model.state_dict().items():
        assert value.equal(live[key]), key


def test_compiled_model_keys_find_the_average() -> None:
    model = small_model()
    average = WeightAverage(model, decay=0.5)
    wrapper = nn.Module()
    wrapper._orig_mod = model  # the key prefix torch.compile adds
    nudge(model, 1.0)
    with average.swapped_in(wrapper):
        assert model.state_dict()["0.weight"].equal(average.state["0.weight"])


def test_saved_average_loads_with_its_step_count(tmp_path: Path) -> None:
    model = small_model()
    average = WeightAverage(model, decay=0.9)
    for step in range(3):
        nudge(model, float(step))
        average.update()
    average.save(tmp_path)

    restored = WeightAverage(small_model(), decay=0.9)
    restored.load(tmp_path, model)
    assert restored.updates == 3
    assert restored.current_decay() == average.current_decay()
    for key, value in average.state.items():
        assert restored.state[key].equal(value), key


def test_checkpoint_without_an_average_restarts_it_from_the_weights(tmp_path: Path) -> None:
    model = small_model()
    average = WeightAverage(small_model(), decay=0.9)
    nudge(model, 3.0)
    average.update()
    average.load(tmp_path, model)  # no weight_average.safetensors there
    assert average.updates == 0
    for key, value in model.state_dict().items():
        assert average.state[key].equal(value), key


def test_decay_outside_its_range_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--shards", str(tmp_path), "--ema-decay", "1"])
    assert exit_info.value.code != 0
    assert "--ema-decay" in capsys.readouterr().err
    with pytest.raises(ValueError):
        WeightAverage(small_model(), decay=0.0)


@pytest.fixture(scope="module")
def ema_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ema")
    flags = ["--epochs", "3", "--ema-decay", "0.9", "--wandb-mode", "disabled"]
    run_in_process(train_argv(tiny_shards, out, "ema", *flags))
    return out / "ema"


def test_checkpoints_hold_the_average_and_the_export_is_it(ema_run: Path) -> None:
    best = ema_run / "checkpoints" / "best"
    average = load_file(best / AVERAGE_NAME)
    weights = load_file(best / "model.safetensors")
    assert average.keys() == weights.keys()
    assert any(not average[k].equal(weights[k]) for k in weights), "the average is the weights"
    exported = load_file(ema_run / "export" / "model.safetensors")
    for key, value in average.items():
        assert exported[key].equal(value), key
    assert (ema_run / "checkpoints" / "last" / AVERAGE_NAME).is_file()


def test_trainer_tests_the_average_as_evaluate_does(
    ema_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    tested = json.loads((ema_run / "test_metrics.json").read_text())
    out = tmp_path / "eval.json"
    main(evaluate_argv(ema_run, tiny_shards, out))
    assert json.loads(out.read_text())["exact_match"] == tested["exact_match"]


def test_resumed_run_keeps_averaging_as_an_unbroken_one(
    ema_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """Two epochs, then a third on resume: the same average as three epochs at once."""
    argv = train_argv(tiny_shards, tmp_path, "broken", "--ema-decay", "0.9",
                      "--wandb-mode", "disabled")  # fmt: skip
    run_in_process([*argv, "--epochs", "2"])
    run_in_process([*argv, "--epochs", "3", "--resume", "auto", "--accept-changes"])
    resumed = load_file(tmp_path / "broken" / "checkpoints" / "last" / AVERAGE_NAME)
    unbroken = load_file(ema_run / "checkpoints" / "last" / AVERAGE_NAME)
    for key, value in unbroken.items():
        assert resumed[key].equal(value), key
    assert [e["epoch"] for e in read_jsonl(tmp_path / "broken" / "metrics.jsonl")] == [1, 2, 3]


def test_resume_with_another_decay_is_refused(
    ema_run: Path, tiny_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = train_argv(tiny_shards, ema_run.parent, "ema", "--ema-decay", "0.99",
                      "--epochs", "3", "--resume", "auto", "--wandb-mode", "disabled")  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(argv)
    assert exit_info.value.code == 2
    assert "--ema-decay 0.9 -> 0.99" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_two_ranks_score_the_average_they_save(tiny_shards: Path, tmp_path: Path) -> None:
    """Under DDP (two gloo ranks) every rank averages the same weights: the test the ranks
    computed together is that of the saved average, evaluated alone afterwards."""
    argv = train_argv(tiny_shards, tmp_path, "two", "--epochs", "2", "--ema-decay", "0.9",
                      "--wandb-mode", "disabled")  # fmt: skip
    done = subprocess.run(
        [*launch_argv(), *argv], env=cpu_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "two"
    assert_ranks_agree(run, tiny_shards, lr_history=None, stop_epoch=2)
    tested = json.loads((run / "test_metrics.json").read_text())
    main(evaluate_argv(run, tiny_shards, tmp_path / "eval.json"))
    alone = json.loads((tmp_path / "eval.json").read_text())
    assert alone["exact_match"] == tested["exact_match"]
    assert alone["loss"] == pytest.approx(tested["loss"], rel=1e-5)
