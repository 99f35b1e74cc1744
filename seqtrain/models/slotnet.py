"""SlotNet: one small digit classifier shared by the three slots.

The generator writes digit i into columns [28i, 28i + 28), so each 28x28 slot is classified
on its own by the same CNN (10 digits + blank). Slots are independent by construction: a slot's
logits depend only on its own pixels, and every slot trains the same weights (three times the
training signal per sample for one set of weights).

With `skip_blank`, slots without ink (every pixel 0: the generator leaves empty slots black) are
answered "blank" and their CNN output does not count: BatchNorm's statistics (batch and running)
see digits only, and no gradient comes from an empty slot. Two paths give that meaning, equal in
logits, gradients and running statistics (tested); `static_shapes` picks one:
- dynamic: the CNN runs on the inked slots only (boolean-mask indexing). With 1-3 digits drawn
  uniformly a third of the slots are empty, so a third of the compute goes; but the CNN's batch
  changes every step, and `inked.any()` and the indexing wait for the host.
- static: the CNN runs on every slot with `MaskedBatchNorm2d` (statistics from the inked slots)
  and `torch.where` answers blank: fixed shapes and no host read, so CUDA graphs,
  `torch.compile(fullgraph=True)` and `torch.func.vmap` can hold it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from seqtrain.data.format import BLANK, DIGIT_SIZE, NUM_CLASSES, NUM_SLOTS
from seqtrain.models.dropout import KeyedDropout, child_keys
from seqtrain.models.masked_batchnorm import MaskedBatchNorm2d

# (channels, 3x3 convs) per resolution stage, 28x28 -> 14x14 -> 7x7 (max pool in between).
SLOTNET_STAGES: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (128, 1))
# Two convs at every stage (the classic BatchNorm MNIST CNN): 2.3x slotnet's FLOPs, still
# 0.65x the reference's, for more accuracy.
SLOTNET_DEEP_STAGES: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (128, 2))
# slotnet_deep at half the width: a quarter of its FLOPs, so four times the samples per FLOP.
SLOTNET_NARROW_STAGES: tuple[tuple[int, int], ...] = ((16, 2), (32, 2), (64, 2))
# Three quarters of narrow's width: ~0.56x its FLOPs, so 1.8x the samples for the same compute.
SLOTNET_SLIM_STAGES: tuple[tuple[int, int], ...] = ((12, 2), (24, 2), (48, 2))
# narrow with one conv at 28x28 instead of two (that second conv is a quarter of its FLOPs):
# 0.75x narrow's FLOPs at its width from 14x14 on.
SLOTNET_LEAN_STAGES: tuple[tuple[int, int], ...] = ((16, 1), (32, 2), (64, 2))
# The logit of "blank" for a slot without ink (all others 0): softmax gives it 1 - 1e-12, so its
# cross-entropy and gradient are nil.
BLANK_LOGIT = 30.0


def _conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    """3x3 conv (no bias: BatchNorm follows), BatchNorm, ReLU."""
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        MaskedBatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]


def _features(stages: tuple[tuple[int, int], ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for index, (width, convs) in enumerate(stages):
        if index:
            layers.append(nn.MaxPool2d(2))
        for _ in range(convs):
            layers += _conv_block(channels, width)
            channels = width
    return nn.Sequential(*layers, GlobalAvgPool(), nn.Flatten())


class GlobalAvgPool(nn.Module):
    """The mean over height and width, as nn.AdaptiveAvgPool2d(1) computes it, but with a
    deterministic CUDA backward: AdaptiveAvgPool2d's has none, so --deterministic would stop."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


class SlotNet(nn.Module):
    """Shared per-slot classifier: [B, 1, 28, 84] -> 3 slots [3B, 1, 28, 28] -> [B, 3, 11].

    Per slot: the conv stages (default: conv 32 @28x28, pool, conv 64 + conv 64 @14x14, pool,
    conv 128 @7x7), global average pool, dropout (each slot's mask drawn from its sample's
    key, see `KeyedDropout`), linear 11.

    `static_shapes` chooses the skip-blank path (see the module's docstring): True static,
    False dynamic, None (the default) `auto_static_shapes`. Set it from outside with
    `use_static_shapes`; it changes no weight, so checkpoints load either way.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int], ...] = SLOTNET_STAGES,
        dropout: float = 0.2,
        skip_blank: bool = False,
        static_shapes: bool | None = None,
    ) -> None:
        super().__init__()
        self.features = _features(stages)
        # A Sequential as before keyed dropout: checkpoints keep their `classifier.1.*` names.
        self.classifier = nn.Sequential(
            KeyedDropout(dropout), nn.Linear(stages[-1][0], NUM_CLASSES)
        )
        self.skip_blank = skip_blank
        self.static_shapes = static_shapes

    def forward(self, x: Tensor, keys: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        # [B, C, 28, 84] -> [B, C, 28, 3, 28] -> [B, 3, C, 28, 28] -> [3B, C, 28, 28]
        slots = x.unflatten(3, (NUM_SLOTS, DIGIT_SIZE)).permute(0, 3, 1, 2, 4)
        slots = slots.reshape(batch * NUM_SLOTS, x.shape[1], DIGIT_SIZE, DIGIT_SIZE)
        slot_keys = None if keys is None else child_keys(keys, NUM_SLOTS)
        if not self.skip_blank:
            classify = self._classify
        elif self.takes_static_path(x.device):
            classify = self._classify_static
        else:
            classify = self._classify_inked
        return classify(slots, slot_keys).view(batch, NUM_SLOTS, NUM_CLASSES)

    def takes_static_path(self, device: torch.device) -> bool:
        """Whether a skip-blank forward on `device` runs the static path: `static_shapes`, or
        if None, `auto_static_shapes` (the dynamic path where BatchNorm layers were replaced
        from outside, e.g. by torch's SyncBatchNorm, which cannot mask its statistics)."""
        maskable = all(
            isinstance(layer, MaskedBatchNorm2d)
            for layer in self.features
            if isinstance(layer, _BatchNorm)
        )
        if self.static_shapes is None:
            return maskable and auto_static_shapes(device)
        if self.static_shapes and not maskable:
            raise ValueError(
                "static_shapes=True needs SlotNet's own MaskedBatchNorm2d layers, not "
                "replacements such as SyncBatchNorm (--sync-batchnorm off)"
            )
        return self.static_shapes

    def _classify(self, slots: Tensor, keys: Tensor | None) -> Tensor:
        dropout, linear = self.classifier
        return linear(dropout(self.features(slots), keys))

    def _classify_inked(self, slots: Tensor, keys: Tensor | None) -> Tensor:
        inked = _inked(slots)
        logits = _blank_logits(slots).expand(slots.shape[0], NUM_CLASSES).clone()
        if inked.any():
            kept_keys = None if keys is None else keys[inked]
            logits[inked] = self._classify(slots[inked], kept_keys).to(logits.dtype)
        return logits

    def _classify_static(self, slots: Tensor, keys: Tensor | None) -> Tensor:
        inked = _inked(slots)
        features = slots
        for layer in self.features:
            if isinstance(layer, MaskedBatchNorm2d):
                features = layer(features, inked)
            else:
                features = layer(features)
        dropout, linear = self.classifier
        # A slot's dropout mask is a function of its own key: the inked slots draw the masks
        # the dynamic path gives them (without keys, torch's generator draws for every slot).
        logits = linear(dropout(features, keys)).to(slots.dtype)
        return torch.where(inked[:, None], logits, _blank_logits(slots))


def auto_static_shapes(device: torch.device) -> bool:
    """The skip-blank path when `static_shapes` is None: static off the CPU and wherever the
    forward is being compiled (dynamo traces it: no graph break), dynamic on an eager CPU,
    where the static path measured 1.9-2.6x the training step (bench.skip_blank;
    docs/benchmarks/cpu-skip-blank-static-vs-dynamic-2026-12-07.md)."""
    return device.type != "cpu" or torch.compiler.is_compiling()


def use_static_shapes(model: nn.Module, static: bool | None) -> None:
    """Set `static_shapes` of every SlotNet in `model` (wrapped by DDP, compiled, an ensemble):
    True for a step that is captured or vmapped, None to go back to `auto_static_shapes`."""
    for module in model.modules():
        if isinstance(module, SlotNet):
            module.static_shapes = static


def _inked(slots: Tensor) -> Tensor:
    """[N] booleans: the slot has a pixel above 0 (the generator leaves empty slots black)."""
    return slots.flatten(1).amax(1) > 0


def _blank_logits(slots: Tensor) -> Tensor:
    """[11] logits answering blank, in the slots' dtype and on their device."""
    logits = slots.new_zeros(NUM_CLASSES)
    logits[BLANK] = BLANK_LOGIT
    return logits
