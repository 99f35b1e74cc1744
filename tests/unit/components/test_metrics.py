"""The reference loss and sequence metrics, including merging across ranks."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.functional import cross_entropy, one_hot

from seqtrain.components.metrics import SequenceMetrics, sequence_loss
from seqtrain.data.format import BLANK

B = BLANK


def logits_for(predicted: list[list[int]]) -> torch.Tensor:
    """Logits whose argmax is `predicted`."""
    return one_hot(torch.tensor(predicted), 11).float() * 5


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_the_sum_of_the_heads_mean_cross_entropies(smoothing):
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 3, 11), torch.randint(0, 11, (7, 3))
    expected = sum(
        cross_entropy(logits[:, i], labels[:, i], label_smoothing=smoothing) for i in range(3)
    )
    assert torch.allclose(sequence_loss(logits, labels, smoothing), expected)


def test_hand_computed_metrics():
    labels = torch.tensor([[1, B, B], [2, 3, B], [4, 5, 6], [7, 8, B]])
    predicted = [[1, B, B], [2, 4, B], [4, 5, 6], [7, 8, 9]]
    metrics = SequenceMetrics()
    metrics.update(logits_for(predicted), labels, torch.tensor(8.0))
    summary = metrics.summary()
    assert summary["count"] == 4
    assert summary["loss"] == 2.0
    assert summary["exact_match"] == 0.5
    assert summary["position_accuracy"] == [1.0, 0.75, 0.75]
    assert summary["length_accuracy"] == {"1": 1.0, "2": 0.0, "3": 1.0}
    assert summary["length_count"] == {"1": 1, "2": 2, "3": 1}
    confusion = summary["confusion"]
    assert sum(map(sum, confusion)) == 12  # every slot of every sample
    assert confusion[3][4] == 1 and confusion[B][9] == 1 and confusion[B][B] == 3
    assert sum(confusion[i][i] for i in range(11)) == 10
    json.dumps(summary)


def test_summed_states_equal_one_state_over_all_data():
    torch.manual_seed(1)
    logits, labels = torch.randn(20, 3, 11), torch.randint(0, 11, (20, 3))
    losses = torch.rand(20)
    whole, first, second = SequenceMetrics(), SequenceMetrics(), SequenceMetrics()
    whole.update(logits, labels, losses.sum())
    first.update(logits[:8], labels[:8], losses[:8].sum())
    second.update(logits[8:], labels[8:], losses[8:].sum())
    merged = SequenceMetrics.from_state(first.state() + second.state())
    assert torch.allclose(merged.state(), whole.state())
    merged_summary, whole_summary = merged.summary(), whole.summary()
    assert merged_summary.pop("loss") == pytest.approx(whole_summary.pop("loss"))
    assert merged_summary == whole_summary
    assert whole.state().dtype == torch.float64


def test_empty_metrics_are_json_safe_zeros():
    summary = SequenceMetrics().summary()
    assert summary["count"] == 0 and summary["exact_match"] == 0.0
    json.dumps(summary)


def test_from_state_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        SequenceMetrics.from_state(torch.zeros(3, dtype=torch.float64))
