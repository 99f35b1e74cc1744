"""Config tables generated from the dataclasses, so the docs cannot drift from the flags.

Each package documents its own config: `python -m seqtrain.config_doc` (training) and
`python -m data_gen.config_doc` (data generation) print their block; `--check FILE` exits 1
when FILE's copy of the block (between its BEGIN/END markers) is stale. This module only
renders: it knows no config, so both packages stand on it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

DOCS_PAGE = "docs/configuration.md"
END = "<!-- END CONFIG TABLE -->"


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (tyro uses the same for --help)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _rows(cls: type, section: str) -> list[str]:
    docs = field_docs(cls)
    rows = []
    for field in dataclasses.fields(cls):
        if field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
            nested := field.default_factory()
        ):
            rows += _rows(type(nested), field.name)
            continue
        flag = "--" + field.name.replace("_", "-")
        flags = f"`{flag}`, `--no-{flag[2:]}`" if isinstance(field.default, bool) else f"`{flag}`"
        doc = docs.get(field.name, "").replace("|", "\\|")
        rows.append(f"| {section} | {flags} | `{_default_text(field)}` | {doc} |")
    return rows


@dataclass(frozen=True)
class ConfigBlock:
    """One generated block: the dataclass, the config name its rows show, the command it
    configures, and the module that regenerates it."""

    config: type
    section: str
    command: str
    module: str

    @property
    def begin(self) -> str:
        return f"<!-- BEGIN CONFIG TABLE (python -m {self.module}) -->"

    def render(self) -> str:
        header = ["| config | flag | default | meaning |", "|---|---|---|---|"]
        table = "\n".join(header + _rows(self.config, self.section))
        return f"{self.begin}\n{self.command}:\n\n{table}\n{END}"

    def copy_in(self, page: Path) -> str | None:
        """The block as `page` holds it, or None when its markers are missing."""
        text = page.read_text()
        if self.begin not in text:
            return None
        start = text.index(self.begin)
        end = text.find(END, start)
        return None if end < 0 else text[start : end + len(END)]


def main(block: ConfigBlock, argv: list[str] | None = None) -> int:
    """Print `block`; with `--check [FILE]` (default: DOCS_PAGE), exit 1 if FILE's copy is stale."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--check"]:
        page = Path(argv[1] if len(argv) > 1 else DOCS_PAGE)
        if block.copy_in(page) != block.render():
            print(f"{page}: config table is stale; regenerate with python -m {block.module}")
            return 1
        return 0
    print(block.render())
    return 0
