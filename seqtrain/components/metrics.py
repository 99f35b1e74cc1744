"""The training loss and the sequence metrics, accumulated on-device and mergeable across ranks.

`SequenceMetrics` keeps every counter in one flat float64 tensor on the metrics' device:
`update` only launches kernels (no `.item()`, no host sync), and summing the flat tensors of
several ranks (an all-reduce) gives the metrics over all their data, so global values are
sums of counts and losses, never means of per-rank means.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import cross_entropy

from seqtrain.data.format import BLANK, NUM_CLASSES, NUM_SLOTS


def sequence_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """The reference loss: the sum over the slots of each head's mean cross-entropy.

    logits [B, 3, 11], labels int64 [B, 3]. Each head sees B targets, so the mean over all
    B*3 (sample, slot) pairs times the number of slots equals that sum.
    """
    per_pair = cross_entropy(
        logits.transpose(1, 2), labels, label_smoothing=label_smoothing
    )  # cross_entropy wants classes in dim 1: [B, 11, 3]
    return per_pair * logits.shape[1]


# Layout of the flat state tensor: (name, length), in order.
_FIELDS = (
    ("count", 1),
    ("loss_sum", 1),
    ("exact", 1),
    ("position_correct", NUM_SLOTS),
    # Index = number of non-blank labels, 0..NUM_SLOTS; length 0 is kept so no sample is lost
    # from the totals, though the generator always writes at least one digit.
    ("length_correct", NUM_SLOTS + 1),
    ("length_total", NUM_SLOTS + 1),
    ("confusion", NUM_CLASSES * NUM_CLASSES),
)


def _layout() -> tuple[dict[str, slice], int]:
    slices, offset = {}, 0
    for name, size in _FIELDS:
        slices[name] = slice(offset, offset + size)
        offset += size
    return slices, offset


_SLICES, STATE_SIZE = _layout()


class SequenceMetrics:
    """Counts for loss, exact match, per-position, per-length accuracy and confusion.

    Create it on the device the logits live on (a rank without data must still contribute a
    zero state of the right device to the all-reduce).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._state = torch.zeros(STATE_SIZE, dtype=torch.float64, device=device)

    def _field(self, name: str) -> Tensor:
        return self._state[_SLICES[name]]

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, loss_sum: Tensor | float) -> None:
        """Add one batch: logits [B, 3, 11], labels [B, 3], loss_sum = summed per-sample loss
        of the batch (e.g. `sequence_loss(...) * B`)."""
        predicted = logits.argmax(dim=-1)
        labels = labels.to(predicted.dtype)
        correct = predicted == labels  # [B, 3]
        exact = correct.all(dim=1)
        lengths = (labels != BLANK).sum(dim=1)
        f64 = torch.float64

        self._field("count").add_(labels.shape[0])
        self._field("loss_sum").add_(torch.as_tensor(loss_sum, dtype=f64, device=self.device))
        self._field("exact").add_(exact.sum().to(f64))
        self._field("position_correct").add_(correct.sum(dim=0).to(f64))
        # index_add_ rather than bincount: bincount on CUDA syncs to size its output.
        self._field("length_correct").index_add_(0, lengths, exact.to(f64))
        self._field("length_total").index_add_(0, lengths, torch.ones_like(lengths, dtype=f64))
        pairs = (labels * NUM_CLASSES + predicted).flatten()
        self._field("confusion").index_add_(0, pairs, torch.ones_like(pairs, dtype=f64))

    @property
    def device(self) -> torch.device:
        return self._state.device

    def state(self) -> Tensor:
        """A flat float64 copy of all counters; states of several ranks merge by summing."""
        return self._state.clone()

    @classmethod
    def from_state(cls, state: Tensor) -> SequenceMetrics:
        """Rebuild metrics from a (possibly summed) `state()` tensor."""
        if state.shape != (STATE_SIZE,):
            raise ValueError(f"expected a state of shape ({STATE_SIZE},), got {tuple(state.shape)}")
        metrics = cls(state.device)
        metrics._state.copy_(state)
        return metrics

    def summary(self) -> dict:
        """JSON-safe values (rates are 0.0 when nothing was counted)."""
        values = {name: self._field(name).cpu().tolist() for name, _ in _FIELDS}
        count = int(values["count"][0])

        def rate(num: float, den: float) -> float:
            return num / den if den else 0.0

        lengths = range(1, NUM_SLOTS + 1)
        return {
            "count": count,
            "loss": rate(values["loss_sum"][0], count),
            "exact_match": rate(values["exact"][0], count),
            "position_accuracy": [rate(c, count) for c in values["position_correct"]],
            "length_accuracy": {
                str(n): rate(values["length_correct"][n], values["length_total"][n])
                for n in lengths
            },
            "length_count": {str(n): int(values["length_total"][n]) for n in lengths},
            "confusion": [
                [int(v) for v in values["confusion"][row * NUM_CLASSES : (row + 1) * NUM_CLASSES]]
                for row in range(NUM_CLASSES)
            ],
        }
