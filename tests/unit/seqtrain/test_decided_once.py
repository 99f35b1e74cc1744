"""Decisions made once: the main process decides, every rank gets its answer or its error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import PartialState

from seqtrain.common.errors import UserError
from seqtrain.distributed import decided_on_main_process
from support.distributed import run_on_ranks


def _rank_decides(out: Path) -> None:
    """On each rank of a 2-process CPU group: one decision that succeeds, one that fails."""
    rank = PartialState(cpu=True).process_index
    asked = []

    def decide() -> str:
        asked.append(rank)
        return f"checkpoint seen by rank {rank}"

    def refuse() -> str:
        asked.append(rank)
        raise UserError(f"refused by rank {rank}")

    answer = decided_on_main_process(decide)
    try:
        decided_on_main_process(refuse)
        error = None
    except UserError as e:
        error = str(e)
    (out / f"{rank}.json").write_text(
        json.dumps({"answer": answer, "error": error, "asked": asked})
    )


@pytest.mark.multiprocess
def test_every_rank_gets_the_main_process_answer_and_error(tmp_path: Path) -> None:
    run_on_ranks(_rank_decides, tmp_path)
    ranks = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0] == {
        "answer": "checkpoint seen by rank 0",
        "error": "refused by rank 0",
        "asked": [0, 0],
    }
    assert ranks[1] == {**ranks[0], "asked": []}  # rank 1 never looked for itself
