"""Typed configuration of a training run: one dataclass per concern.

Every field is a command-line flag of the same name (`batch_size` -> `--batch-size`); the
docstring under each field is its `--help` text. The resolved config is printed at start,
saved as `config.yaml` in the run folder (rerun with `--config run/config.yaml`) and logged
to W&B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from seqtrain.common.errors import UserError

# --report-to's trackers (seqtrain/components/trackers.py).
REPORT_TO = ("wandb", "tensorboard", "csv")


def _require(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise UserError(f"{flag} {message}")


@dataclass
class DataConfig:
    shards: str = "data/shards"
    """Folder or URL (s3://, gs://, http(s)://, file://) written by `seqtrain-data generate`
    (holds manifest.json). Remote shards are streamed, never downloaded whole first."""
    batch_size: int = 128
    """Training batch size per process, when --global-batch-size is not given (the global
    batch is then this x the number of processes). With --global-batch-size, config.yaml saves
    the per-process batch the run trained with here."""
    global_batch_size: int | None = None
    """Samples per optimizer step over all processes, whatever their number: each process
    trains global / processes of them (which must divide), and step k of an epoch trains the
    same samples on 1, 2, 4 ... processes, with any loader workers and accumulation, also
    after a resume on another number of processes. Default: --batch-size per process. The
    reference recipe: 128."""
    micro_batch_size: int | None = None
    """Samples per forward/backward pass on each process: the per-process batch is trained in
    passes of this many whose gradients are accumulated (all-reduced after the last only) into
    one optimizer step, the step one pass of the whole batch takes (BatchNorm statistics
    aside: they see one micro-batch). Must divide the per-process batch. Default: the
    per-process batch (no accumulation)."""
    canonical_streams: int | None = None
    """Contiguous runs each epoch's samples are dealt into, each shuffled in windows; every
    step takes global-batch / this many samples from each, and each process reads only the
    streams its share of the step covers. Must divide the global batch; numbers of processes
    that divide it keep each stream on one process (otherwise a process also reads the one or
    two streams it shares). Default: the largest power of two up to 64 dividing the global
    batch."""
    eval_batch_size: int = 1000
    """Batch size per process for validation and test."""
    num_workers: int = 2
    """Loader worker processes per training process (0 loads in the main process); at most one
    per canonical stream the process reads. Does not change the sample order."""
    shuffle_buffer: int = 8192
    """Samples shuffled together in memory: each canonical stream permutes windows of this /
    --canonical-streams samples (rounded up to whole chunks), so a process holds about this x
    its share of the streams. Part of the sample order, the same on any number of processes
    and with or without --stage-on-device."""
    pin_memory: bool = True
    """Pin host batches for faster, asynchronous copies to a CUDA device (only when training
    on one: CPU ranks, --cpu on a GPU node too, pin nothing)."""
    stage_on_device: bool = False
    """Load each epoch's training samples of this process (uint8) into device memory and serve
    batches from there instead of the loader workers (the same batches in the same order; about
    2.4 KB per sample): the next epoch is read by a background thread while the current one
    trains, and the val split is read into device memory once."""
    verify_shards: bool = True
    """At start, hash every shard (sha256) and decode it, checking it against the manifest:
    catches any flipped byte (as `seqtrain-data verify` does). The processes split the shards,
    so the data is read once per job (seconds for the default 2.5 GB). With
    --no-verify-shards, damage is found when a shard is read, except bytes flipped inside
    image payloads. Remote shards are only looked up at start: each is hashed as it streams."""
    cache_dir: Path | None = None
    """Keep each remote shard here once downloaded (checked by sha256 on every use, fetched
    again if damaged), so a node downloads it at most once over all epochs; default: stream
    remote shards anew each epoch. Ignored for local folders."""
    cache_max_gb: float = 0.0
    """Most gigabytes (10^9 bytes) of shards --cache-dir holds: a download that takes it past
    this deletes the least recently used shards (used: downloaded or read from the cache), never
    the one being read; processes sharing the folder share the cap (0: no cap)."""
    skip_corrupt: bool = False
    """At start, decode every shard (and hash it with --verify-shards) and leave out the missing
    or damaged ones, counted and logged, instead of stopping with an error (remote shards: the
    missing ones)."""

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, "--batch-size", "must be > 0")
        for flag, size in (
            ("--global-batch-size", self.global_batch_size),
            ("--micro-batch-size", self.micro_batch_size),
            ("--canonical-streams", self.canonical_streams),
        ):
            _require(size is None or size > 0, flag, "must be > 0")
        _require(self.eval_batch_size > 0, "--eval-batch-size", "must be > 0")
        _require(self.num_workers >= 0, "--num-workers", "must be >= 0")
        _require(self.shuffle_buffer >= 0, "--shuffle-buffer", "must be >= 0")
        _require(self.cache_max_gb >= 0, "--cache-max-gb", "must be >= 0")
        capped_without_cache = self.cache_max_gb > 0 and self.cache_dir is None
        _require(not capped_without_cache, "--cache-max-gb", "needs --cache-dir")

    @property
    def cache_max_bytes(self) -> int:
        """--cache-max-gb in bytes (0: no cap)."""
        return int(self.cache_max_gb * 1e9)


@dataclass
class ModelConfig:
    model: str = "reference"
    """Architecture: reference (the seed's network), slotnet, slotnet_deep,
    slotnet_deep_skipblank (empty slots skipped), slotnet_narrow_skipblank (the same at half
    width), slotnet_slim_skipblank (at 3/8 width), slotnet_lean_skipblank (narrow with one conv at
    28x28), tiny (for tests)."""
    channels_last: bool = True
    """Channels-last memory format: faster convolutions on GPUs and, for the reference, on CPU
    (bench/train_throughput.py); --no-channels-last keeps NCHW."""
    compile: bool = False
    """Compile the model with torch.compile."""
    capture: Literal["auto", "on", "off"] = "auto"
    """Record the whole training step (forward, backward, clipping, Adam, weight average, loss
    bookkeeping) once as a CUDA graph and replay it: one launch per step instead of hundreds.
    auto: where it holds (one GPU process, not fp16; skip-blank nets then take their static
    path), said once in the log, eager elsewhere (the CPU, several processes); on: the same, and
    a case where it cannot hold is an error; off: the eager step. The recording's seconds are
    reported apart from the epochs' (capture_seconds)."""
    sync_batchnorm: Literal["auto", "on", "off"] = "auto"
    """BatchNorm statistics over the micro-batches of all processes (torch's SyncBatchNorm, one
    all-reduce per BatchNorm layer and pass; GPUs only) instead of each process's own. auto: on
    for a BatchNorm model on several GPU processes whose micro-batch is under 32 samples, where
    per-process statistics get noisy; off otherwise (and always on CPU, where torch has none)."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Learning rate at a global batch of --lr-base-batch (with `--sched onecycle`: the peak),
    scaled by --lr-scale for the global batch the run steps with."""
    lr_scale: Literal["none", "linear", "sqrt"] = "none"
    """How --lr follows the global batch G (samples per optimizer step): `linear` trains at
    --lr x G / --lr-base-batch (SGD-like; with a warm-up), `sqrt` at --lr x sqrt(G /
    --lr-base-batch) (Adam's usual rule), `none` at --lr whatever G (the reference). The LR
    trained with is printed at start and saved in the W&B summary and ranks/*.json."""
    lr_base_batch: int = 128
    """The global batch --lr was tuned for (the reference recipe's 128); used by --lr-scale."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """`adam` (weight decay added to the gradient, the reference) or `adamw` (decoupled)."""
    weight_decay: float = 0.0
    """Weight decay of the optimizer."""
    sched: Literal["plateau", "onecycle", "cosine"] = "plateau"
    """LR schedule: `plateau` (ReduceLROnPlateau on the val loss once per epoch, the reference),
    `onecycle` (OneCycleLR's curve up to --lr and down over --epochs, with its own warm-up) or
    `cosine` (after any warm-up, a cosine from --lr down to --lr x --lr-floor at the last step).
    onecycle and cosine are planned in samples trained, so they stay continuous when a resumed
    run changes the global batch."""
    warmup_steps: int = 0
    """Raise the LR linearly from --lr/N to --lr over the first N optimizer steps (plateau or
    cosine; a plateau LR decision waits until the warm-up is over). 0: no warm-up."""
    warmup_epochs: float = 0.0
    """The warm-up as epochs instead of steps (e.g. 0.5; its length is fixed in samples at the
    run's start). Not with --warmup-steps."""
    lr_floor: float = 0.0
    """`--sched cosine`: the LR the decay ends at, as a fraction of --lr."""
    clip_grad_norm: float = 0.0
    """Scale the gradients down to this global L2 norm (over all parameters and processes, after
    unscaling fp16) when it is larger; the norm before clipping is logged as train/grad_norm
    (the mean over each --log-every window). 0: no clipping."""
    label_smoothing: float = 0.0
    """Label smoothing of each head's cross-entropy."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights, updated after every step with this
    decay (e.g. 0.999; 0: none). Validation, early stopping, the best checkpoint's test and the
    export then use the average (saved in checkpoints as weight_average.safetensors)."""
    plateau_factor: float = 0.1
    """ReduceLROnPlateau: multiply the LR by this when validation loss stops improving."""
    plateau_patience: int = 2
    """ReduceLROnPlateau: epochs without improvement before reducing the LR."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, "--lr", "must be > 0")
        _require(self.weight_decay >= 0, "--weight-decay", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "--label-smoothing", "must be in [0, 1)")
        _require(0 <= self.ema_decay < 1, "--ema-decay", "must be in [0, 1)")
        _require(0 < self.plateau_factor < 1, "--plateau-factor", "must be in (0, 1)")
        _require(self.plateau_patience >= 0, "--plateau-patience", "must be >= 0")
        _require(self.lr_base_batch > 0, "--lr-base-batch", "must be > 0")
        _require(self.warmup_steps >= 0, "--warmup-steps", "must be >= 0")
        _require(self.warmup_epochs >= 0, "--warmup-epochs", "must be >= 0")
        _require(not (self.warmup_steps and self.warmup_epochs), "--warmup-steps",
                 "and --warmup-epochs exclude each other: give one")  # fmt: skip
        _require(
            self.sched != "onecycle" or not (self.warmup_steps or self.warmup_epochs),
            "--warmup-steps/--warmup-epochs",
            "do not apply to --sched onecycle: it warms up itself (its first 30 %)",
        )
        _require(0 <= self.lr_floor < 1, "--lr-floor", "must be in [0, 1)")
        _require(self.clip_grad_norm >= 0, "--clip-grad-norm", "must be >= 0")


@dataclass
class TrainConfig:
    epochs: int = 20
    """Maximum number of epochs (early stopping may end sooner)."""
    early_stop_patience: int | None = None
    """Stop after this many epochs without a better --best-metric (0: never). Default: 5 with
    `--sched plateau`, 0 with onecycle and cosine, whose LR is planned to the last epoch (an
    early stop would end them while the LR is still high)."""
    steps_per_epoch: int | None = None
    """Optimizer steps per epoch; default: the epoch's training samples / global batch."""
    seed: int = 0
    """Seed for model init (the same on every process), shuffling and dropout (each process
    draws its own stream derived from the seed and its rank)."""
    seeds: tuple[int, ...] = ()
    """Train one run per seed, one after another, each as with --seed in its own folder
    `<run-name>-seed<k>` (needs --run-name), then print their table (`seqtrain report`). A
    complete run is skipped (unless --overwrite): rerun the command with --resume auto after a
    stop. Empty: one run, of --seed."""
    members: int = 1
    """Train this many models of --model at once, stacked into one model (an ensemble in one
    process, one optimizer), each with its own seed (--member-seeds) for its initialisation,
    sample order and dropout: member i trains as a run of its seed would (the LR schedule and
    early stopping follow the ensemble's val loss). Logs each member's val loss and exact match,
    keeps each member's best weights, scores val and test as the members' mean softmax and
    exports an ensemble folder that evaluate, predict and export read. 1: one model."""
    member_seeds: tuple[int, ...] = ()
    """The seed of each of the --members models, one per member; default: --seed, --seed + 1,
    and so on."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """Autocast precision. auto: bf16 where the device computes it natively (a GPU of compute
    capability >= 8.0; a CPU with avx512_bf16 or amx_bf16), else no (fp32). bf16 also runs
    (emulated, slower) on other CPUs; fp16 needs a GPU."""
    deterministic: bool = False
    """Deterministic kernels only (torch.use_deterministic_algorithms, cuDNN deterministic, no
    cuDNN benchmark, CUBLAS_WORKSPACE_CONFIG): on a GPU, reruns and resumes then give the same
    weights as an unbroken run, at some speed cost. CPU training is deterministic without it."""
    cpu: bool = False
    """Run on CPU even when GPUs are visible (several processes form a gloo group)."""
    output_dir: Path = Path("runs")
    """Parent folder of run folders."""
    run_name: str | None = None
    """Run folder name below --output-dir and the W&B run name; default: a timestamp."""
    resume: str | None = None
    """Continue from a checkpoint folder, or `auto` for the run folder's latest one."""
    overwrite: bool = False
    """Start a new run (no --resume) in a run folder that already holds one, removing the old
    run's checkpoints, metrics, export and W&B run (refused without this flag)."""
    accept_changes: bool = False
    """Resume although the data (manifest fingerprint) or settings that shape the sample stream
    or the optimisation differ from those the checkpoint was trained with (refused without)."""
    log_every: int = 50
    """Log train loss, LR and samples/s every this many steps (each window is read, without
    waiting, one log step later)."""
    checkpoint_every: int = 0
    """Also save checkpoints/last every this many steps within an epoch (0: at epoch ends only)."""
    keep_checkpoints: int = 0
    """Also keep the checkpoints of the last this many epochs as checkpoints/epoch-NNNN, the
    oldest removed first (0: none). Each shares its files with that epoch's `last` (hard links
    where the file system allows), so it costs disk only once `last` has moved on."""
    best_metric: Literal["val_loss", "val_exact_match"] = "val_loss"
    """What picks checkpoints/best and what early stopping waits on: the val loss (lower is
    better, the reference) or the val exact match (higher is better). The plateau LR schedule
    steps on the val loss either way (smooth, where exact match moves in coarse steps)."""
    dist_timeout: int = 1800
    """Seconds a rank waits in a collective for the others before failing (a hung or vanished
    rank then ends the run with an error instead of blocking it forever)."""

    def __post_init__(self) -> None:
        _require(self.epochs > 0, "--epochs", "must be > 0")
        _require(
            self.early_stop_patience is None or self.early_stop_patience >= 0,
            "--early-stop-patience",
            "must be >= 0",
        )
        _require(
            self.steps_per_epoch is None or self.steps_per_epoch > 0,
            "--steps-per-epoch",
            "must be > 0",
        )
        _require(self.log_every > 0, "--log-every", "must be > 0")
        _require(self.checkpoint_every >= 0, "--checkpoint-every", "must be >= 0")
        _require(self.keep_checkpoints >= 0, "--keep-checkpoints", "must be >= 0")
        _require(self.dist_timeout > 0, "--dist-timeout", "must be > 0")
        _require(len(set(self.seeds)) == len(self.seeds), "--seeds", "lists a seed twice")
        _require(not self.seeds or bool(self.run_name), "--seeds", "needs --run-name (the runs "
                 "are <run-name>-seed<k>, found again when the command is rerun)")  # fmt: skip
        _require(self.resume in (None, "auto") or not self.seeds, "--seeds",
                 "resumes with --resume auto only (each seed from its own folder)")  # fmt: skip
        _require(self.members > 0, "--members", "must be > 0")
        _require(not self.member_seeds or len(self.member_seeds) == self.members,
                 "--member-seeds", f"names {len(self.member_seeds)} seed(s) for --members "
                 f"{self.members}: give one per member")  # fmt: skip
        _require(len(set(self.member_seeds)) == len(self.member_seeds), "--member-seeds",
                 "lists a seed twice")  # fmt: skip
        _require(not (self.seeds and self.member_seeds), "--member-seeds", "does not combine "
                 "with --seeds (each run's members are its seed, seed + 1, ...)")  # fmt: skip

    @property
    def trained_seeds(self) -> tuple[int, ...]:
        """The seed of each model the run trains: --member-seeds, else --seed, --seed + 1, ...
        for --members (one model: --seed)."""
        return self.member_seeds or tuple(self.seed + i for i in range(self.members))


@dataclass
class PreemptConfig:
    preempt_signal: Literal["USR1", "USR2", "HUP", "QUIT", "none"] = "USR1"
    """Signal handled like SIGTERM (always handled): save checkpoints/last at the current step
    and exit with code 75, to be resumed with --resume auto. `none` leaves it to its default
    action (choose it, or another, where the stack uses USR1 itself, as some NCCL setups do)."""
    preempt_check_every: int = 10
    """Steps between the checks, taken together by all ranks (one tiny all-reduce), of whether
    any rank got a preemption signal or --checkpoint-minutes have passed."""
    checkpoint_minutes: float = 0.0
    """Also save checkpoints/last once this many minutes have passed since the last such save
    (all ranks together, at the next check): a kill without warning loses at most that much
    work (0: off)."""

    def __post_init__(self) -> None:
        _require(self.preempt_check_every > 0, "--preempt-check-every", "must be > 0")
        _require(self.checkpoint_minutes >= 0, "--checkpoint-minutes", "must be >= 0")


@dataclass
class LogConfig:
    """The W&B settings left out (None) come from W&B's environment variables, named below, else
    the default; config.yaml saves them resolved, and a resumed run keeps its first start's."""

    wandb_mode: Literal["offline", "online", "disabled"] | None = None
    """W&B mode: `offline` writes the run under the run folder (sync later), `online` streams it
    (default: $WANDB_MODE, else offline)."""
    wandb_project: str | None = None
    """W&B project (default: $WANDB_PROJECT, else seqtrain)."""
    wandb_entity: str | None = None
    """W&B entity, team or user (default: $WANDB_ENTITY, else your W&B default)."""
    wandb_dir: Path | None = None
    """Folder W&B writes its `wandb/` files into (default: $WANDB_DIR, else the run folder)."""
    wandb_tags: tuple[str, ...] | None = None
    """W&B tags (default: $WANDB_TAGS, comma-separated, else none)."""
    wandb_group: str | None = None
    """W&B group, e.g. the seeds of one recipe or the members of an ensemble (default:
    $WANDB_RUN_GROUP, else none)."""
    wandb_notes: str | None = None
    """W&B notes: a longer description of the run (default: $WANDB_NOTES, else none)."""
    wandb_job_type: str | None = None
    """W&B job type, e.g. `train` or `sweep` (default: $WANDB_JOB_TYPE, else none)."""
    wandb_log_model: bool = False
    """At the end, log the best model's export as a W&B model artifact of the run."""
    wandb_log_data: bool = False
    """At start, record the shards as a W&B dataset artifact the run used, by reference (their
    URLs, named by their fingerprint; nothing is uploaded). Online only: W&B refuses used
    artifacts offline."""
    report_to: tuple[str, ...] = ("wandb",)
    """Where the metrics go, one or more of `wandb` (as --wandb-mode says), `tensorboard` (event
    files in the run folder's tensorboard/; needs the tensorboard package, the `tensorboard`
    extra) and `csv` (the run folder's train_log.csv: step,metric,value rows), space- or
    comma-separated (--report-to wandb,csv)."""
    profile_steps: str | None = None
    """`A:B`: write a torch.profiler trace of global optimizer steps A to B (counted from 1) to
    the run folder's profile/rank<N>.pt.trace.json, one per process (Perfetto, chrome://tracing,
    TensorBoard's profiler), also saved with the W&B run's files (default: no profiling)."""

    def __post_init__(self) -> None:
        names = [n.strip() for item in self.report_to for n in item.split(",") if n.strip()]
        unknown = sorted(set(names) - set(REPORT_TO))
        _require(
            not unknown, "--report-to", f"takes {', '.join(REPORT_TO)}; got {', '.join(unknown)}"
        )
        _require(bool(names), "--report-to", f"needs one or more of {', '.join(REPORT_TO)}")
        self.report_to = tuple(dict.fromkeys(names))  # order kept, repeats dropped
        _profile_window(self.profile_steps)  # a bad spec fails before the run starts

    @property
    def wandb_on(self) -> bool:
        """W&B is one of --report-to and --wandb-mode does not disable it."""
        return "wandb" in self.report_to and self.wandb_mode != "disabled"

    @property
    def profile_window(self) -> tuple[int, int] | None:
        """--profile-steps as (first, last) global steps, or None."""
        return _profile_window(self.profile_steps)


def _profile_window(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    first, _, last = (part.strip() for part in spec.partition(":"))
    numbers = first.isdigit() and last.isdigit()
    _require(
        numbers and 1 <= int(first) <= int(last),
        "--profile-steps",
        f"must be A:B, global steps with 1 <= A <= B; got {spec!r}",
    )
    return int(first), int(last)


@dataclass
class RunConfig:
    """Train a digit-sequence recogniser on shards from `seqtrain-data`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preempt: PreemptConfig = field(default_factory=PreemptConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        # Resolved here, so config.yaml and the resume check record the patience trained with.
        if self.train.early_stop_patience is None:
            planned_to_the_end = self.optim.sched != "plateau"
            self.train.early_stop_patience = 0 if planned_to_the_end else 5
        if self.train.members > 1:
            # SyncBatchNorm layers in place of the members' BatchNorm: not built for stacking.
            _require(self.model.sync_batchnorm != "on", "--sync-batchnorm on",
                     "is not supported with --members")  # fmt: skip
