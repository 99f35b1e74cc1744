"""The config tables in docs/configuration.md are generated from the dataclasses and must not
drift."""

from pathlib import Path

import pytest

from data_gen.config_doc import GENERATE_TABLE
from seqtrain.common.config_doc import ConfigBlock, field_docs, main
from seqtrain.config import TrainConfig
from seqtrain.config_doc import TRAIN_TABLE
from support import REPO

PAGE = REPO / "docs" / "configuration.md"


@pytest.mark.parametrize("block", [TRAIN_TABLE, GENERATE_TABLE], ids=["train", "generate"])
def test_docs_config_table_is_current(block: ConfigBlock):
    assert block.copy_in(PAGE) == block.render(), f"run: python -m {block.module}"


def test_every_field_is_documented_and_listed():
    docs = field_docs(TrainConfig)
    assert docs["early_stop_patience"].startswith("Stop after")
    assert "`--early-stop-patience`" in TRAIN_TABLE.render()
    assert "`--cpu`, `--no-cpu`" in TRAIN_TABLE.render()
    assert "`--mnist-dir`" in GENERATE_TABLE.render()


def test_check_fails_on_a_stale_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    page = tmp_path / "configuration.md"
    page.write_text(TRAIN_TABLE.render().replace("Training batch size", "Batch size"))
    assert main(TRAIN_TABLE, ["--check", str(page)]) == 1
    assert "stale; regenerate with python -m seqtrain.config_doc" in capsys.readouterr().out
    page.write_text(f"# Configuration\n\n{TRAIN_TABLE.render()}\n")
    assert main(TRAIN_TABLE, ["--check", str(page)]) == 0
