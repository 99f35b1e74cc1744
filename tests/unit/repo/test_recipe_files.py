"""Every named recipe in recipes/ is a partial RunConfig that `seqtrain train --config` accepts,
its values of the types the flags would give (YAML reads `no` as false and `3e-3` as a string),
and it opens with a comment saying what it is for and what it measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seqtrain.common.cliparse import parse_config
from seqtrain.config import RunConfig
from support import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_there_are_recipes() -> None:
    assert len(RECIPES) > 10


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_through_the_cli_config_loader(path: Path) -> None:
    config = parse_config(RunConfig, ["--config", str(path)], "seqtrain train", "")
    sections = yaml.safe_load(path.read_text())
    assert sections and sections["model"]["model"], "a recipe names its model"
    defaults = RunConfig()
    for section, fields in sections.items():
        for name, value in fields.items():
            default = getattr(getattr(defaults, section), name)
            expected = float if isinstance(default, float) else type(default)
            if default is not None:
                assert isinstance(value, expected), f"{section}.{name}: {value!r}"
            assert getattr(getattr(config, section), name) == value


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_opens_with_what_it_is_for_and_what_it_measured(path: Path) -> None:
    lines = path.read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert header[0].startswith(f"# {path.stem}: "), header[0]
    assert any(line.startswith("# Measured") for line in header), "say what it measured"
