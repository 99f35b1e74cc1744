"""The training loop: the reference recipe, with every decision taken identically on all ranks.

for each epoch:
    train one epoch            (per-step logging every --log-every steps)
    evaluate val               (metric counts summed over ranks -> global loss)
    plateau LR step (from the global val loss), early-stopping update (its --best-metric)
    save last (and best, and the epoch's checkpoint under --keep-checkpoints)
load best, evaluate test, write metrics and the predictions picture
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from seqtrain.common.atomic import atomic_write_json
from seqtrain.components import trackers, tracking
from seqtrain.components.capture import choose_capture
from seqtrain.components.checkpoint import (
    Position,
    best_to_test,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from seqtrain.components.checkpoint_history import epoch_end_folders, prune_epoch_checkpoints
from seqtrain.components.grad_clip import GradClip
from seqtrain.components.lagged_log import LaggedLog, WindowRead, read_window
from seqtrain.components.loss_window import LossWindow
from seqtrain.components.members import (
    MemberBests,
    interleave,
    member_records,
    member_values,
    scored_summary,
    scores_per_batch,
)
from seqtrain.components.optimizer import hyperparameters_on_device
from seqtrain.components.preemption import Decision, Preempted, PreemptionWatch
from seqtrain.components.profiling import StepProfiler
from seqtrain.components.resume_guard import decide_resume, run_identity
from seqtrain.components.run_files import (
    append_metrics,
    epoch_line,
    truncate_metrics,
    write_predictions_picture,
    write_rank_record,
    write_resolved_config,
)
from seqtrain.components.run_folder import claim_run_folder, release_run_folder
from seqtrain.components.run_paths import RunPaths
from seqtrain.components.schedules import EarlyStopping, LRSchedule, lr_rule_line
from seqtrain.components.wandb_settings import settle_run_settings
from seqtrain.components.weight_average import WeightAverage
from seqtrain.config import RunConfig
from seqtrain.data.format import Manifest, checked_manifest, load_manifest, shard_problems
from seqtrain.data.global_batch import BatchSizes, batch_sizes
from seqtrain.data.position import (
    EpochPlan,
    Layout,
    TrainBatch,
    plan_epoch,
    planned_batches,
    resize_note,
)
from seqtrain.data.staged import StagedEpochs, StagedEval, staged_eval_batches
from seqtrain.data.stream import (
    Batches,
    eval_loader,
    train_layout,
    train_loader,
    train_steps_per_epoch,
)
from seqtrain.distributed import (
    decided_on_main_process,
    join_processes,
    make_accelerator,
    resolved_precision,
    seed_rank_streams,
    shared_across_processes,
    syncs_batchnorm,
)
from seqtrain.evaluate import evaluate_outputs
from seqtrain.export import (
    export_ensemble,
    export_model,
    load_model,
    member_folder,
    write_ensemble,
    write_export,
)
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample, mfu_peak, throughput_metrics
from seqtrain.models.stacked import MemberEnsemble, StackedMembers, ensemble_output
from seqtrain.step import Batch, TrainStep, build_model_and_optimizer


@dataclass
class Session:
    """Everything one training run holds (built once by `_build`)."""

    cfg: RunConfig
    run_dir: Path
    manifest: Manifest
    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    stopper: EarlyStopping
    position: Position
    layout: Layout  # the order of each epoch's samples
    sizes: BatchSizes  # global batch, per process, micro-batches
    preemption: PreemptionWatch
    profiler: StepProfiler  # --profile-steps
    identity: dict[str, Any] = field(default_factory=dict)
    resumed_from: Path | None = None
    flops_per_sample: float = 0.0
    peak_flops: float | None = None
    lr_history: list[float] = field(default_factory=list)
    val_batches: Batches | StagedEval | None = None  # built once: workers persist, or staged
    staged: StagedEpochs | None = None  # --stage-on-device: the next epoch read ahead
    average: WeightAverage | None = None  # --ema-decay
    clip: GradClip | None = None  # --clip-grad-norm
    member_bests: MemberBests | None = None  # --members
    train_step: TrainStep | None = None  # built once: its device buffers persist

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    @property
    def lr(self) -> float:
        return self.scheduler.current  # kept on the host: no read of the device's LR

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train, evaluate the best model on test, and return the test metrics and run folder."""
    run = _build(cfg)
    with (
        run.preemption,
        _closing_tracking_when_stopped(run.accelerator),
        run.profiler.running(run.position.step),  # innermost: the trace reaches an open W&B run
    ):
        for epoch in range(run.position.epoch, cfg.train.epochs):
            if run.stopper.should_stop:
                run.log(f"early stopping: {cfg.train.best_metric} did not improve for "
                        f"{run.stopper.patience} epochs")  # fmt: skip
                break
            start = time.perf_counter()
            train_loss = train_epoch(run, epoch)
            val = evaluate(run, "val")
            improved, lr_reduced = _end_of_epoch_decisions(run, val)
            _keep_member_bests(run, val)  # --members: each member's own best weights
            run.position = run.position.next_epoch()
            # Reported before `last` moves: a death in between resumes the epoch and reports it
            # again (the resume cuts its metrics line); the other order could lose the line.
            record = _epoch_record(run, epoch, train_loss, val, improved, start)
            _report_epoch(run.accelerator, run.run_dir, record, cfg.train.epochs, lr_reduced)
            _save(run, improved)
        return _finish(run)


@contextmanager
def _closing_tracking_when_stopped(accelerator: Accelerator) -> Iterator[None]:
    try:
        yield
    except Preempted as stop:
        tracking.close_after_stop(accelerator, stop.code)
        raise


def _build(cfg: RunConfig) -> Session:
    sizes = batch_sizes(cfg.data, join_processes(cfg).num_processes)  # or a one-line error
    cfg.data.batch_size = sizes.per_process  # saved as trained (config.yaml)
    cfg.train.mixed_precision = resolved_precision(cfg)  # on this rank's GPU; saved as decided
    run_dir = settle_run_settings(cfg)  # run name, W&B settings: flag > WANDB_* > default
    tracking.check_tracker_installed(cfg)
    trackers.check_installed(cfg)
    data = cfg.data
    manifest = load_manifest(data.shards, data.cache_dir, data.cache_max_bytes)
    manifest, skipped = _usable_shards(manifest, cfg)
    accelerator = make_accelerator(cfg, run_dir)
    model, optimizer = build_model_and_optimizer(cfg, accelerator)
    seed_rank_streams(cfg.train.seed, accelerator.process_index)  # dropout is keyed per sample
    scheduler = LRSchedule(optimizer, cfg.optim)
    stopper = EarlyStopping(cfg.train.early_stop_patience, cfg.train.best_metric)
    accelerator.register_for_checkpointing(scheduler, stopper)
    layout = train_layout(cfg.data, sizes)
    preemption = PreemptionWatch(cfg.preempt, accelerator.device)
    run = Session(
        cfg, run_dir, manifest, accelerator, model, optimizer, scheduler, stopper, Position(),
        layout, sizes, preemption, _profiler(cfg, run_dir, accelerator),
    )  # fmt: skip
    if cfg.optim.ema_decay:
        run.average = WeightAverage(model, cfg.optim.ema_decay)
    if cfg.train.members > 1:
        run.member_bests = MemberBests(cfg.train.members, cfg.train.best_metric)
        accelerator.register_for_checkpointing(run.member_bests)
    if cfg.optim.clip_grad_norm:
        run.clip = GradClip(cfg.optim.clip_grad_norm, accelerator.device, cfg.train.members)
    capture = choose_capture(cfg, accelerator.device, accelerator.num_processes)  # or an error
    run.train_step = TrainStep(
        accelerator, model, optimizer, cfg, sizes.accumulation, run.clip, run.average,
        capture.mode, fallback=run.log,
    )  # fmt: skip
    run.log(capture.line)
    if cfg.data.stage_on_device:
        rank, world = accelerator.process_index, accelerator.num_processes
        run.staged = StagedEpochs(manifest, rank, world, accelerator.device)
        run.log("--stage-on-device: each epoch is staged while the one before trains, val once")
    run.flops_per_sample = flops_per_sample(
        partial(build_model, cfg.model.model), length_weights=manifest.length_weights
    )
    run.peak_flops, peak_line = mfu_peak(accelerator.device, cfg.train.mixed_precision)
    run.log(peak_line)
    run.log(sizes.describe() + ("; BatchNorm synchronized" if syncs_batchnorm(model) else ""))
    scheduler.check_warmup(_samples_left(run), layout.global_batch, _epoch_samples(run))
    claim_run_folder(cfg, run_dir)  # after the checks of the input: a bad start leaves no folder
    run.identity = run_identity(cfg, manifest)
    run.resumed_from = decide_resume(cfg, run_dir, run.identity)
    if run.resumed_from is not None:
        run.position = _load(run, run.resumed_from)
        _log_resume(run)
    scheduler.plan(_samples_left(run), layout.global_batch, _epoch_samples(run))
    run.log(lr_rule_line(cfg.optim, layout.global_batch))
    _start_outputs(run)
    tracking.log_summary(accelerator, {"effective_lr": scheduler.lr})
    if skipped:
        run.log(f"skipped {len(skipped)} corrupt shard(s): " + "; ".join(skipped))
        tracking.log_summary(accelerator, {"data/skipped_shards": len(skipped)})
    return run


def _profiler(cfg: RunConfig, run_dir: Path, accelerator: Accelerator) -> StepProfiler:
    rank = accelerator.process_index
    return StepProfiler(
        cfg.log.profile_window,
        RunPaths(run_dir).profile_trace(rank),
        accelerator.device,
        saved=partial(tracking.save_trace, accelerator),
    )


def _load(run: Session, checkpoint: Path) -> Position:
    """Collective: restore `checkpoint` (and its weight average under --ema-decay)."""
    cfg = run.cfg
    position = load_checkpoint(run.accelerator, checkpoint, cfg.model.model, cfg.train.seed)
    hyperparameters_on_device(run.optimizer, run.accelerator.device)
    if run.average is not None:
        run.average.load(checkpoint, run.model)
    return position


def _log_resume(run: Session) -> None:
    position = run.position
    run.log(
        f"resumed from {run.resumed_from} at epoch {position.epoch + 1}, "
        f"batch {position.steps_done} ({position.samples_done} samples)"
    )
    note = resize_note(position, run.layout)
    if note:
        run.log(note)


def _usable_shards(manifest: Manifest, cfg: RunConfig) -> tuple[Manifest, list[str]]:
    """The manifest, checked at start with --verify-shards or --skip-corrupt (then without
    the bad shards, listed); unchecked otherwise (damage is found when a shard is read)."""
    if not (cfg.data.verify_shards or cfg.data.skip_corrupt):
        return manifest, []
    problems = shared_across_processes(partial(shard_problems, manifest, cfg.data.verify_shards))
    return checked_manifest(manifest, problems, cfg.data.skip_corrupt)


def _start_outputs(run: Session) -> None:
    """The resolved config beside the outputs before step 1, metrics of replayed epochs cut."""
    if run.accelerator.is_main_process:
        write_resolved_config(run.run_dir, run.cfg)
        truncate_metrics(run.run_dir, run.position.epoch)
    trackers.continue_after(run.accelerator, run.position.step)  # the CSV/TensorBoard files
    tracking.start_tracking(
        run.accelerator, run.cfg, run.run_dir, run.manifest, run.identity["data"]
    )
    run.accelerator.wait_for_everyone()


def train_epoch(run: Session, epoch: int) -> float:
    """One epoch (the rest of it, when resumed) of optimizer steps; returns the mean train
    loss over all ranks."""
    cfg, accelerator = run.cfg, run.accelerator
    fresh_steps = _steps_in_epoch(cfg, run.manifest, accelerator.num_processes, epoch)
    start = run.position
    plan, run.position = plan_epoch(start, epoch, run.layout, cfg.train.seed, fresh_steps)
    loader = _train_batches(run, start, epoch, fresh_steps)
    run.model.train()
    run.train_step.start_epoch()
    window, epoch_loss = run.train_step.window, run.train_step.epoch_loss
    log = LaggedLog(accelerator)
    progress = tqdm(
        total=plan.steps,
        initial=plan.skip,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    with progress as bar:  # closed on errors too, so an error line starts on a clean line
        for batch_index, batch in enumerate(loader, start=plan.skip + 1):
            run.position = run.position.after_step()
            run.train_step(batch, run.position.step)  # with the weight average and loss windows
            run.scheduler.after_step()
            run.profiler.after_step(run.position.step)
            bar.update()
            if run.position.step % cfg.train.log_every == 0:
                _log_window(run, log.complete(), bar)
                log.submit(window, run.clip, run.position.step, _host_figures(run, window, batch))
            # The epoch's last step is left to the epoch-end checkpoint, saved after val.
            last_step = batch_index == plan.steps
            agreed = Decision() if last_step else run.preemption.poll(run.position.step)
            if agreed.save or _mid_epoch_checkpoint_due(cfg, batch_index, plan.steps):
                _log_window(run, log.complete(), bar)  # a resumed run logs each step once
                read_window(accelerator, epoch_loss)  # no NaN/inf in what is saved
                save_checkpoint(
                    accelerator,
                    run.paths.last,
                    cfg.model.model,
                    run.position,
                    identity=run.identity,
                    average=run.average,
                )
            if agreed.stop:
                run.log(f"preempted: saved {run.paths.last} at epoch {epoch + 1}, "
                        f"batch {batch_index}; continue with --resume auto")  # fmt: skip
                raise run.preemption.stop(accelerator.is_local_main_process)
        _log_window(run, log.complete(), bar)
    return read_window(accelerator, epoch_loss)


def _train_batches(
    run: Session, start: Position, epoch: int, fresh_steps: int
) -> Iterable[TrainBatch]:
    """This rank's batches of `epoch` from `start` on; with --members, every member's batch of
    each step as a run of its seed would train it, interleaved (`interleave`)."""
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    batches = []
    for seed in run.cfg.train.trained_seeds:
        plan, _ = plan_epoch(start, epoch, run.layout, seed, fresh_steps)
        loader = _epoch_loader(run, plan)
        batches.append(planned_batches(loader, plan, rank, world, lambda: run.lr))
    _read_ahead(run, epoch + 1)
    return batches[0] if len(batches) == 1 else interleave(batches)


def _read_ahead(run: Session, epoch: int) -> None:
    """--stage-on-device: stage `epoch` in the background while the one before trains."""
    if run.staged is None or epoch >= run.cfg.train.epochs:
        return
    steps = _steps_in_epoch(run.cfg, run.manifest, run.accelerator.num_processes, epoch)
    for seed in run.cfg.train.trained_seeds:
        plan, _ = plan_epoch(Position(), epoch, run.layout, seed, steps)
        run.staged.read_ahead(plan)


def _epoch_loader(run: Session, plan: EpochPlan) -> Iterable[Batch]:
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    if run.staged is not None:
        return run.staged.batches(plan)
    return train_loader(run.manifest, run.cfg.data, plan, rank, world, run.accelerator.device)


def _samples_left(run: Session) -> int:
    """Samples the run will still train, for the LR plan: the rest of the current epoch as
    this run deals it out, then whole epochs."""
    cfg, start, batch = run.cfg, run.position.epoch, run.layout.global_batch
    if start >= cfg.train.epochs:
        return 0
    world = run.accelerator.num_processes
    steps = _steps_in_epoch(cfg, run.manifest, world, start)
    plan, _ = plan_epoch(run.position, start, run.layout, cfg.train.seed, steps)
    later = range(start + 1, cfg.train.epochs)
    return batch * (
        plan.steps - plan.skip + sum(_steps_in_epoch(cfg, run.manifest, world, e) for e in later)
    )


def _epoch_samples(run: Session) -> int:
    """Samples of the epoch the run starts in (sizes --warmup-epochs)."""
    world = run.accelerator.num_processes
    steps = _steps_in_epoch(run.cfg, run.manifest, world, run.position.epoch)
    return run.layout.global_batch * steps


def _steps_in_epoch(cfg: RunConfig, manifest: Manifest, world_size: int, epoch: int) -> int:
    # --batch-size holds the per-process batch the run trains with (see `_build`).
    return cfg.train.steps_per_epoch or train_steps_per_epoch(
        manifest, cfg.data.batch_size * world_size, epoch
    )


def _mid_epoch_checkpoint_due(cfg: RunConfig, batch_index: int, steps: int) -> bool:
    """Every --checkpoint-every batches, except at the epoch's end (saved after val anyway)."""
    every = cfg.train.checkpoint_every
    return every > 0 and batch_index % every == 0 and batch_index < steps


def _host_figures(run: Session, window: LossWindow, batch: TrainBatch) -> dict[str, float]:
    """What the host knows of a --log-every window as it ends: the LR, the job's samples/s
    and model TFLOP/s, MFU per device (on a GPU of known peak)."""
    processes = run.accelerator.num_processes
    seconds = time.perf_counter() - window.started
    samples_per_s = window.batches * len(batch.labels) * processes / max(seconds, 1e-9)
    return {
        "train/lr": run.lr,
        "train/samples_per_s": samples_per_s,
        **throughput_metrics(samples_per_s, run.flops_per_sample, processes, run.peak_flops),
    }


def _log_window(run: Session, read: WindowRead | None, bar: tqdm) -> None:
    """Log a window read back by `LaggedLog` (under the step it was taken at)."""
    if read is None:
        return
    tracking.log_metrics(run.accelerator, read.metrics, step=read.step)
    samples_per_s = read.host["train/samples_per_s"]
    bar.set_postfix(loss=f"{read.loss:.4f}", samples_s=f"{samples_per_s:.0f}")


def evaluate(run: Session, split: str, model: nn.Module | None = None) -> dict[str, Any]:
    """Metrics over the whole split, identical on every rank (see `evaluate_model`); with
    --members, the ensemble's, each member's under "members" (`scored_summary`). `model`: the
    `_scored_model` of the split when the caller holds it already."""
    with nullcontext(model) if model is not None else _scored_model(run, split) as scored:
        metrics = evaluate_outputs(
            scored,
            run.accelerator,
            run.manifest,
            run.cfg.data,
            split,
            run.cfg.model.channels_last,
            _val_batches(run) if split == "val" else None,
            scores_per_batch(run.cfg.train.members),
        )
    return scored_summary(metrics)


@contextmanager
def _scored_model(run: Session, split: str = "val") -> Iterator[nn.Module]:
    """The bare model as it is scored and exported: holding the weight average under
    --ema-decay, its own weights again after the block. With --members, the members and their
    ensemble (`MemberEnsemble`), on test each member with its own best weights."""
    if run.member_bests is not None and split == "test":
        yield MemberEnsemble(_member_bests_model(run))
        return
    model = run.accelerator.unwrap_model(run.model)
    with run.average.swapped_in(model) if run.average is not None else nullcontext(model) as bare:
        yield bare if run.member_bests is None else MemberEnsemble(bare)


def _member_bests_model(run: Session) -> StackedMembers:
    """A copy of the stacked members, each holding its best weights (checkpoints/members)."""
    stacked = copy.deepcopy(run.accelerator.unwrap_model(run.model))
    for i in range(stacked.count):
        best = load_model(run.paths.members / member_folder(i))
        stacked.load_member_state(i, best.state_dict())
    return stacked


def _keep_member_bests(run: Session, val: dict[str, Any]) -> None:
    """--members: the weights (as scored) of each member at its best epoch so far, written to
    checkpoints/members (an ensemble folder) before `last` moves past the epoch."""
    if run.member_bests is None:
        return
    improved = run.member_bests.update(val)
    if run.accelerator.is_main_process and improved:
        folder, name = run.paths.members, run.cfg.model.model
        with _scored_model(run) as scores:
            for i in improved:
                state = scores.stacked.member_state(i)
                write_export(state, name, run.paths.last, folder / member_folder(i))
        kept = [member_folder(i) for i in range(run.cfg.train.members)]
        write_ensemble(folder, [m for m in kept if (folder / m).is_dir()], name)


def _val_batches(run: Session) -> Batches | StagedEval:
    """The val batches, built at the first evaluation and kept: the loader's workers start once
    per run; under --stage-on-device the split is read once into device memory."""
    if run.val_batches is None:
        accelerator = run.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        if run.staged is not None:
            run.val_batches = staged_eval_batches(
                run.manifest, run.cfg.data, "val", rank, world, accelerator.device
            )
        else:
            run.val_batches = eval_loader(
                run.manifest, run.cfg.data, "val", rank, world, accelerator.device, persistent=True
            )
    return run.val_batches


def _end_of_epoch_decisions(run: Session, val: dict[str, Any]) -> tuple[bool, bool]:
    """Plateau LR step and early-stopping update from the same global values on every rank."""
    lr_before = run.lr
    run.scheduler.after_epoch(val["loss"])
    run.lr_history.append(run.lr)
    return run.stopper.update(val), run.lr < lr_before


def _save(run: Session, improved: bool) -> None:
    """The epoch's state is saved once and copied: its epoch checkpoint and a new best are
    written before `last` moves past the epoch (a crash in between resumes from the old `last`
    and redoes the epoch, so neither is ever lost), then the oldest epoch checkpoints go."""
    epoch, keep = run.position.epoch, run.cfg.train.keep_checkpoints
    saved, *copies = epoch_end_folders(run.paths, epoch, keep, improved)
    save_checkpoint(run.accelerator, saved, run.cfg.model.model, run.position, run.identity,
                    run.average)  # fmt: skip
    for folder in copies:
        copy_checkpoint(run.accelerator, saved, folder)
    if keep:
        prune_epoch_checkpoints(run.paths, epoch, keep)
    run.preemption.saved()


def _epoch_record(
    run: Session, epoch: int, train_loss: float, val: dict, improved: bool, start: float
) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl (and its W&B point)."""
    return {
        "epoch": epoch + 1,
        "step": run.position.step,
        "train_loss": train_loss,
        "val_loss": val["loss"],
        "val_exact_match": val["exact_match"],
        "val_count": val["count"],
        **member_records(val),
        "lr": run.lr,
        # Recording the captured step is no training time: reported apart.
        "epoch_seconds": time.perf_counter() - start - run.train_step.epoch_capture_seconds,
        "capture_seconds": run.train_step.epoch_capture_seconds,
        "best": improved,
        "num_processes": run.accelerator.num_processes,
    }


def _report_epoch(
    accelerator: Accelerator, run_dir: Path, record: dict[str, Any], epochs: int, lr_reduced: bool
) -> None:
    tracking.log_epoch(accelerator, record)
    if accelerator.is_main_process:
        append_metrics(run_dir, record)
        tqdm.write(epoch_line(record, epochs, lr_reduced))


def _finish(run: Session) -> dict[str, Any]:
    """Load the best checkpoint, evaluate test, write results, close tracking."""
    accelerator = run.accelerator
    # A stop signal from here on is only recorded: the test takes seconds and redoing it after a
    # requeue would cost a start-up; the run ends complete (exit 0) instead of preempted.
    best = decided_on_main_process(partial(best_to_test, run.paths))
    _load(run, best)
    picture = run.paths.predictions
    # One scored model for the test and the picture (--members: each member's best, read once).
    with _scored_model(run, "test") as model:
        test = evaluate(run, "test", model)
        if accelerator.is_main_process:
            atomic_write_json(run.paths.test_metrics, test)
            write_predictions_picture(picture, ensemble_output(model), accelerator, run.manifest,
                                      run.cfg)  # fmt: skip
    sources = {"resumed_from": run.resumed_from, "tested": best}
    write_rank_record(run.run_dir, accelerator, run.lr_history, run.position.epoch, sources,
                      effective_lr=run.scheduler.lr)  # fmt: skip
    if accelerator.is_main_process:
        summary = {f"test/{k}": v for k, v in test.items() if k != "members"}
        tracking.log_summary(accelerator, summary | member_values(test, "test"))
        tracking.log_image(accelerator, "predictions", picture, step=run.position.step)
        if run.member_bests is None:
            export_model(best, run.paths.export)
        else:
            export_ensemble(run.paths.members, run.paths.export)
        if run.cfg.log.wandb_log_model:
            tracking.log_model(accelerator, run.paths.export)
        run.log(
            f"test exact match {test['exact_match']:.4f} on {test['count']} samples; "
            f"outputs in {run.run_dir}"
        )
    if run.preemption.signal_name:
        run.log(f"{run.preemption.signal_name} arrived after the last step: finished the run first")
    accelerator.wait_for_everyone()
    tracking.finish_tracking(accelerator)
    release_run_folder()
    return {"run_dir": str(run.run_dir), "test": test, "epochs": run.position.epoch}
