"""The README's config table is generated from the dataclasses and must not drift."""

from pathlib import Path

from seqtrain.config import TrainConfig
from seqtrain.config_doc import config_tables, field_docs, readme_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_table_is_current():
    assert readme_table(README) == config_tables(), "run: python -m seqtrain.config_doc"


def test_every_field_is_documented_and_listed():
    docs = field_docs(TrainConfig)
    assert docs["early_stop_patience"].startswith("Stop after")
    assert "`--early-stop-patience`" in config_tables()
    assert "`--cpu`, `--no-cpu`" in config_tables()
