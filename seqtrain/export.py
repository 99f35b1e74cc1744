"""Deployment export: the best weights as safetensors plus a plain JSON model description.

An export folder holds `model.safetensors` (the bare model's state dict) and `model.json`
(written last, so a folder without it is incomplete). An ensemble folder (what a `--members`
run exports) holds one export folder per member and `ensemble.json` naming them: every command
that takes --checkpoint/--ensemble reads it as its members listed one by one. `load_model`
reads an export, a training checkpoint or a run folder with torch and safetensors only: no
Accelerate, W&B or data loaders, so a deployment needs nothing of the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from seqtrain.common.atomic import atomic_write_bytes, atomic_write_json, read_json_object
from seqtrain.common.errors import UserError
from seqtrain.components.checkpoint import META_NAME, find_checkpoint
from seqtrain.components.run_paths import RunPaths
from seqtrain.components.weight_average import AVERAGE_NAME
from seqtrain.data.format import BLANK, IMAGE_SHAPE, NUM_CLASSES, NUM_SLOTS
from seqtrain.models import build_model
from seqtrain.models.averaged import AveragedPredictor, cross_shifts
from seqtrain.models.state import prefix_free
from seqtrain.version import __version__

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"
EXPORT_FORMAT = "seqtrain-model"
EXPORT_VERSION = 1
ENSEMBLE_NAME = "ensemble.json"
ENSEMBLE_FORMAT = "seqtrain-ensemble"


def member_folder(index: int) -> str:
    """The folder of member `index` inside an ensemble folder."""
    return f"member{index}"


@dataclass
class ExportConfig:
    """Export a run's best weights for deployment: model.safetensors + model.json."""

    checkpoint: Path
    """Run folder (its best checkpoint), checkpoint folder or export folder."""
    out: Path
    """Folder to write model.safetensors and model.json to (created if needed)."""


def command(argv: list[str]) -> None:
    """`seqtrain export --checkpoint RUN --out DIR`."""
    from seqtrain.common.cliparse import parse_config  # tyro is not needed to load a model

    cfg = parse_config(ExportConfig, argv, "seqtrain export", ExportConfig.__doc__ or "")
    members = ensemble_members(cfg.checkpoint)
    if members is not None:
        export_ensemble(cfg.checkpoint, cfg.out)
        print(f"exported an ensemble of {len(members)} {members[0].model!r} models to {cfg.out}")
        return
    source = resolve_source(cfg.checkpoint)
    export_model(cfg.checkpoint, cfg.out)
    print(f"exported {source.model!r} from {source.origin} to {cfg.out}")


def class_names() -> list[str]:
    """Output class index -> name: the digits, then `blank` (an empty slot)."""
    return [str(c) if c != BLANK else "blank" for c in range(NUM_CLASSES)]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are and which registered architecture they belong to."""

    weights: Path
    model: str
    origin: Path
    """The folder the weights were found in (a checkpoint or export folder)."""


def resolve_source(path: str | Path) -> ModelSource:
    """An export folder, a checkpoint folder, a run folder (its best checkpoint) or the
    `model.safetensors` file inside one of them; anything else is a UserError."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if (path / CONFIG_NAME).is_file():
        return ModelSource(path / WEIGHTS_NAME, _read_export_config(path)["model"], path)
    for folder in (path, RunPaths(path).best):
        checkpoint = find_checkpoint(folder)
        if checkpoint is not None:
            meta = read_json_object(checkpoint / META_NAME)
            _refuse_stacked(checkpoint, meta)
            return ModelSource(_scored_weights(checkpoint), str(meta.get("model")), checkpoint)
    raise UserError(
        f"{path} is not a seqtrain run, checkpoint or export folder "
        f"(no {CONFIG_NAME}, no {META_NAME}, no complete checkpoints/best)"
    )


def _refuse_stacked(checkpoint: Path, meta: dict) -> None:
    """A --members run's checkpoint holds its members stacked: no single model to load."""
    settings = (meta.get("identity") or {}).get("settings", {})
    members = settings.get("--members", 1)
    if members > 1:
        raise UserError(
            f"{checkpoint} holds {members} stacked --members models: give the run folder, its "
            "checkpoints/members or its export (ensemble folders) instead"
        )


def ensemble_members(path: str | Path) -> list[ModelSource] | None:
    """The members of an ensemble folder, or of a --members run folder (its
    checkpoints/members, each member's best); None for anything else."""
    path = Path(path)
    for folder in (path, RunPaths(path).members):
        if (folder / ENSEMBLE_NAME).is_file():
            description = read_json_object(folder / ENSEMBLE_NAME)
            if description.get("format") != ENSEMBLE_FORMAT:
                raise UserError(f"{folder / ENSEMBLE_NAME} is not a {ENSEMBLE_FORMAT} description")
            return [resolve_source(folder / name) for name in description["members"]]
    return None


def _scored_weights(checkpoint: Path) -> Path:
    """The weights the trainer scores: the weight average of an --ema-decay run, else the
    model's own."""
    average = checkpoint / AVERAGE_NAME
    return average if average.is_file() else checkpoint / WEIGHTS_NAME


@dataclass(kw_only=True)
class ModelChoice:
    """The model a command runs: one trained model, or several averaged, over shifted views."""

    checkpoint: Path
    """Run folder (its best checkpoint), checkpoint folder or export folder."""
    ensemble: list[Path] = field(default_factory=list)
    """More trained models (run, checkpoint or export folders): the prediction is the mean of
    every model's softmax (an ensemble)."""
    tta_shift: int = 0
    """Test-time augmentation: also average over each slot's content shifted 1..N pixels up,
    down, left and right within its slot (1 + 4N views per model)."""

    def __post_init__(self) -> None:
        if self.tta_shift < 0:
            raise UserError("--tta-shift must be >= 0")

    @property
    def sources(self) -> list[ModelSource]:
        """Where each member's weights are, an ensemble folder read as its members listed (a
        UserError for a path that holds none)."""
        return [
            source
            for path in (self.checkpoint, *self.ensemble)
            for source in ensemble_members(path) or [resolve_source(path)]
        ]


def load_predictor(choice: ModelChoice) -> nn.Module:
    """The chosen model in eval mode on CPU: `load_model` of the one checkpoint, or the mean
    softmax of the members over the views (log-probabilities, read like logits)."""
    members = [load_model(source.origin) for source in choice.sources]
    views = cross_shifts(choice.tta_shift)
    if len(members) == len(views) == 1:
        return members[0]
    return AveragedPredictor(members, views).eval()


def load_model(path: str | Path) -> nn.Module:
    """The trained model in eval mode on CPU, from an export, checkpoint or run folder.

    It maps float32 images [B, 1, 28, 84] in [0, 1] (white digits on black, left-aligned)
    to logits [B, 3, 11]; class 10 is an empty slot.
    """
    if ensemble_members(path) is not None:
        raise UserError(
            f"{path} is an ensemble (several models): read it with `seqtrain evaluate` or "
            "`predict` (--checkpoint), or `seqtrain.export.load_predictor`"
        )
    source = resolve_source(path)
    model = build_model(source.model)
    state = prefix_free(_load_weights(source.weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = str(e).splitlines()[-1].strip() or type(e).__name__
        raise UserError(
            f"{source.weights} does not hold {source.model!r} weights: {reason}"
        ) from None
    return model.eval()


def export_model(source: str | Path, out_dir: str | Path) -> Path:
    """Write `model.safetensors` and `model.json` of `source` (see `load_model`) to `out_dir`.

    The weights are loaded into the model before writing, so a broken source never produces
    an export; each file is written atomically, `model.json` last.
    """
    resolved = resolve_source(source)
    model = load_model(resolved.origin)
    out_dir = Path(out_dir)
    if out_dir.resolve() == resolved.origin.resolve():
        raise UserError(f"--out {out_dir} is the source folder itself; choose another folder")
    write_export(model.state_dict(), resolved.model, resolved.origin, out_dir)
    return out_dir


def write_export(
    state: dict[str, torch.Tensor], model_name: str, origin: Path, out_dir: Path
) -> None:
    """An export folder of `state` (a `model_name` state dict found in `origin`), each file
    written atomically, `model.json` last."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(out_dir / WEIGHTS_NAME, safetensors_bytes(state))
    atomic_write_json(out_dir / CONFIG_NAME, _export_config(model_name, origin))


def write_ensemble(folder: Path, members: list[str], model_name: str) -> None:
    """`folder`'s `ensemble.json`, naming its member folders (written atomically, after them)."""
    description = {"format": ENSEMBLE_FORMAT, "format_version": EXPORT_VERSION,
                   "model": model_name, "members": members}  # fmt: skip
    atomic_write_json(folder / ENSEMBLE_NAME, description)


def export_ensemble(source: str | Path, out_dir: str | Path) -> Path:
    """Export every member of the ensemble `source` (see `ensemble_members`) to
    `out_dir`/member<i>, then its `ensemble.json`."""
    members = ensemble_members(source) or []
    out_dir = Path(out_dir)
    names = [member_folder(i) for i in range(len(members))]
    for name, member in zip(names, members, strict=True):
        export_model(member.origin, out_dir / name)
    write_ensemble(out_dir, names, members[0].model)
    return out_dir


def _export_config(model_name: str, origin: Path) -> dict:
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model": model_name,
        "seqtrain_version": __version__,
        "exported_from": str(origin),
        "input": {
            "shape": [1, *IMAGE_SHAPE],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "layout": "white digits on black, left-aligned; slot i is columns [28i, 28i+28)",
        },
        "output": {"shape": [NUM_SLOTS, NUM_CLASSES], "classes": class_names()},
    }


def _read_export_config(folder: Path) -> dict:
    config = read_json_object(folder / CONFIG_NAME)
    if config.get("format") != EXPORT_FORMAT or "model" not in config:
        raise UserError(f"{folder / CONFIG_NAME} is not a {EXPORT_FORMAT} description")
    if config.get("format_version") != EXPORT_VERSION:
        raise UserError(
            f"{folder / CONFIG_NAME} has format version {config.get('format_version')}, this "
            f"seqtrain reads version {EXPORT_VERSION}"
        )
    return config


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
