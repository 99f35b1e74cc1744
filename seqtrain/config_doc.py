"""The README's table of config fields, generated from the dataclasses so it cannot drift.

`python -m seqtrain.config_doc` prints the tables; `--check README.md` exits 1 when the
README's copy (between the BEGIN/END markers) is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
from pathlib import Path

from data_gen.config import GenConfig
from seqtrain.config import RunConfig

BEGIN = "<!-- BEGIN CONFIG TABLE (python -m seqtrain.config_doc) -->"
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


def config_tables() -> str:
    header = ["| config | flag | default | meaning |", "|---|---|---|---|"]
    train = "\n".join(header + _rows(RunConfig, "train"))
    gen = "\n".join(header + _rows(GenConfig, "generate"))
    return (
        f"{BEGIN}\n`seqtrain train` (and `--config run.yaml`):\n\n{train}\n\n"
        f"`seqtrain-data generate`:\n\n{gen}\n{END}"
    )


def readme_table(readme: Path) -> str | None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--check"]:
        readme = Path(argv[1] if len(argv) > 1 else "README.md")
        if readme_table(readme) != config_tables():
            print(f"{readme}: config table is stale; regenerate with python -m seqtrain.config_doc")
            return 1
        return 0
    print(config_tables())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
