"""The docs hold together: every relative link and image in README.md, docs/ and the model cards
resolves (anchors included, by GitHub's heading slugs), README's Layout tree names the folders
the repository has, and README stays short. Plain text only: no torch, no network."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent
    return next(p for p in (here, *here.parents) if (p / "pyproject.toml").is_file())


REPO = _repo_root()
README = REPO / "README.md"
README_MAX_LINES = 260
MAX_LINE_CHARS = 300
# A top-level folder holding any of these is part of the repository's shape (Layout must name it).
SHAPE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".md"}


def repo_files() -> list[Path]:
    """The repository's files, relative: git's tracked and not-ignored ones, else a plain walk."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, check=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        return [Path(name) for name in out.split("\0") if name and (REPO / name).exists()]
    except (OSError, subprocess.SubprocessError):
        files = []
        for root, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            dirs[:] = [d for d in dirs if not d.endswith(".egg-info")]
            files += [Path(root, n).relative_to(REPO) for n in names if not n.startswith(".")]
        return files


FILES = repo_files()


def markdown_pages() -> list[Path]:
    """README.md, every page under docs/, and the model cards (`*/models/NAME/README.md`)."""
    pages = [README] if README.exists() else []
    for rel in FILES:
        in_docs = rel.suffix == ".md" and rel.parts[0] == "docs"
        model_card = rel.name == "README.md" and len(rel.parts) >= 3 and rel.parts[-3] == "models"
        if in_docs or model_card:
            pages.append(REPO / rel)
    return sorted(set(pages))


# --- markdown parsing ------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
# `](target)` of every inline link and image, nested ones too; an optional "title" after it
_LINK_TARGET = re.compile(
    r"\]\(\s*<?([^()\s<>]+(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+[\"'(][^)]*)?\)"
)
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML_REF = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)", re.I)
_HTML_ID = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)", re.I)
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks (kept as blank lines) and inline code spans."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return _CODE_SPAN.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower case, punctuation dropped,
    each space a hyphen (github-slugger)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"\*+|(?<!\w)_+|_+(?!\w)", "", text)  # emphasis markers
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every `#anchor` a link into `page` may use: heading slugs (repeats numbered) and HTML ids."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set(_HTML_ID.findall(text))
    for heading in _HEADING.findall(text):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def link_targets(page: Path) -> list[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    return _LINK_TARGET.findall(text) + _REF_DEF.findall(text) + _HTML_REF.findall(text)


def broken_links(page: Path) -> list[str]:
    """`page`'s relative links whose file, folder or heading does not exist."""
    broken = []
    for target in link_targets(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # https:, mailto:, ...: not checked here (no network)
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part)
        if not path_part:
            dest = page
        elif path_part.startswith("/"):
            dest = (REPO / path_part.lstrip("/")).resolve()
        else:
            dest = (page.parent / path_part).resolve()
        if not dest.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file or folder")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return broken


# --- the Layout tree -------------------------------------------------------------------------


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def layout_folders() -> list[str]:
    """The folders README's Layout tree names, as paths (an indented entry is inside the one
    above it)."""
    block = re.search(r"^```[^\n]*\n(.*?)^```", _section(README.read_text(), "Layout"), re.M | re.S)
    assert block, "README's Layout section has no tree (a fenced block)"
    stack: list[tuple[int, str]] = []
    folders = []
    for line in block.group(1).splitlines():
        entry = re.match(r"^(\s*)([\w.-]+(?:/[\w.-]+)*)/(?:\s|$)", line)
        if not entry:
            continue
        indent, name = len(entry.group(1)), entry.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = f"{stack[-1][1]}/{name}" if stack else name
        stack.append((indent, path))
        folders.append(path)
    return folders


def installed_packages() -> list[str]:
    """Top-level folders pyproject ships (`[tool.setuptools.packages.find] include`)."""
    text = (REPO / "pyproject.toml").read_text()
    find = r"^\[tool\.setuptools\.packages\.find\]\s*\n(?:.*\n)*?include\s*=\s*\[(.*?)\]"
    match = re.search(find, text, re.M | re.S)
    patterns = re.findall(r"[\"']([^\"']+)[\"']", match.group(1)) if match else []
    tops = {rel.parts[0] for rel in FILES if len(rel.parts) > 1 and rel.parts[1] == "__init__.py"}
    return sorted(t for t in tops if any(fnmatch.fnmatch(t, p) for p in patterns))


def shape_folders() -> list[str]:
    """What the tree must show: each top-level folder holding code, scripts, configs or docs,
    and each subpackage of the installed packages."""
    tops = {
        rel.parts[0]
        for rel in FILES
        if len(rel.parts) > 1 and not rel.parts[0].startswith(".") and rel.suffix in SHAPE_SUFFIXES
    }
    subs = {
        "/".join(rel.parts[:2])
        for rel in FILES
        if rel.parts[0] in installed_packages() and len(rel.parts) > 2 and rel.suffix == ".py"
    }
    return sorted(tops | subs)


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_slugs_follow_github():
    assert github_slug("Weights & Biases") == "weights--biases"
    assert github_slug("Evaluate, predict, report, export") == "evaluate-predict-report-export"
    assert github_slug("Kills without warning: `--checkpoint-minutes`") == (
        "kills-without-warning---checkpoint-minutes"
    )
    assert github_slug("Compute to a target: 0.03 PFLOP (issue 13, CPU, default-size data)") == (
        "compute-to-a-target-003-pflop-issue-13-cpu-default-size-data"
    )
    slug = github_slug("`narrow_0.03pflop`: the **best** figure")
    assert slug == "narrow_003pflop-the-best-figure"


def test_link_checker_finds_a_broken_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Two words\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#two-words) ![pic](docs/a.md) [top](#top) [web](https://x.y/z)\n"
        "`[in code](missing.md)`\n```\n[fenced](missing.md)\n```\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#three) [up](../elsewhere.md)\n# Top\n"
    )
    assert broken_links(page) == [
        "docs/b.md: no such file or folder",
        "docs/a.md#three: no heading with anchor #three in docs/a.md",
        "../elsewhere.md: outside the repository",
    ]


def test_layout_tree_matches_the_folders():
    named = layout_folders()
    missing = [folder for folder in named if not (REPO / folder).is_dir()]
    assert missing == [], f"README's Layout names folders that do not exist: {missing}"
    unnamed = [folder for folder in shape_folders() if folder not in named]
    assert unnamed == [], f"README's Layout leaves out: {unnamed}"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move topics to docs/"
    long = [i for i, line in enumerate(lines, 1) if len(line) > MAX_LINE_CHARS]
    assert long == [], f"README.md lines over {MAX_LINE_CHARS} characters: {long}"


def test_readme_holds_what_ci_runs():
    """.ci/run installs "exactly as the README's Quick start says": README shows its command."""
    ci = REPO / ".ci" / "run"
    if not ci.exists():
        pytest.skip("no .ci/run in this checkout")
    command = next(line for line in ci.read_text().splitlines() if "launch/setup.sh" in line)
    assert command.strip() in _section(README.read_text(), "Quick start")
