"""CI: the user install (README, Install): seqtrain's wheel in a fresh venv without the test tools.

Builds the wheel as a user does (`python -m build`: its build requirement from the registry, in
isolation), installs it with pip into a fresh venv and runs the first commands a user types. The
wheel's runtime requirements are not downloaded again (torch alone is gigabytes): a .pth file
shows the fresh venv, from .venv (which pip resolved from the same declarations), exactly the
distributions those requirements reach, and nothing else. `pip install --no-index` and `pip check`
then prove the wheel declares all it needs; the test tools must stay out of reach.

Usage, from the repository root after `bash launch/setup.sh`: .venv/bin/python .ci/user_install.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
TEST_TOOLS = ("pytest", "hypothesis", "ruff")


def run(*command: str | Path, cwd: Path | None = None) -> str:
    """Run a command (echoed, with its seconds), fail CI if it fails; its stdout."""
    print("+", " ".join(map(str, command)), flush=True)
    start = time.monotonic()
    done = subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.PIPE, text=True)
    print(f"  ({time.monotonic() - start:.1f} s)", flush=True)
    return done.stdout


def required_distributions(requirements: list[str]) -> list[metadata.Distribution]:
    """The distributions installed here that `requirements` reach, through each one's own
    requirements (those of an extra only where the extra is asked for)."""
    found: dict[str, metadata.Distribution] = {}
    visited: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        dist = found.setdefault(name, metadata.distribution(requirement.name))
        for wanted in ("", *requirement.extras):
            if (name, wanted) not in visited:
                visited.add((name, wanted))
                todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return list(found.values())


def link_top_level(dists: list[metadata.Distribution], into: Path) -> None:
    """Symlink each distribution's top-level modules, packages and .dist-info folder into `into`
    (scripts outside site-packages and .pth files, which only site-packages runs, left out)."""
    into.mkdir()
    for dist in dists:
        if dist.files is None:
            raise SystemExit(f"{dist.metadata['Name']} lists no files (no RECORD): cannot link it")
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".." and f.suffix != ".pth"}:
            if not (into / top).exists():
                (into / top).symlink_to(Path(dist.locate_file(top)))


def main() -> None:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="user-install-") as tmp_name:
        tmp = Path(tmp_name)
        # An sdist first, the wheel built from it: no stale build/ folder of the checkout leaks in.
        run(sys.executable, "-m", "build", "--outdir", tmp / "dist", REPO)
        (wheel,) = (tmp / "dist").glob("seqtrain-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            wheel_metadata = Parser().parsestr(archive.read(name).decode())

        venv = tmp / "venv"
        run(sys.executable, "-m", "venv", "--without-pip", venv)
        python = venv / "bin" / "python"
        site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
        requirements = wheel_metadata.get_all("Requires-Dist")
        link_top_level(required_distributions(requirements), tmp / "deps")
        (Path(site.strip()) / "seqtrain_runtime_deps.pth").write_text(f"{tmp / 'deps'}\n")

        pip = (sys.executable, "-m", "pip", "--python", python)
        run(*pip, "install", "--quiet", "--no-index", wheel)
        print(run(*pip, "check"), end="")
        check_commands(venv, wheel_metadata["Version"], cwd=tmp)
    print(f"user install checked in {time.monotonic() - start:.0f} s")


def check_commands(venv: Path, version: str, cwd: Path) -> None:
    """The commands work from the installed wheel (not the checkout); the test tools are absent."""
    bin_dir = venv / "bin"
    printed = run(bin_dir / "seqtrain", "--version", cwd=cwd)
    assert printed == f"seqtrain {version}\n", f"seqtrain --version printed {printed!r}"
    assert "--config PATH" in run(bin_dir / "seqtrain", "train", "--help", cwd=cwd)
    assert "generate" in run(bin_dir / "seqtrain-data", "--help", cwd=cwd)
    code = "import seqtrain; print(seqtrain.__file__)"
    where = run(bin_dir / "python", "-c", code, cwd=cwd).strip()
    assert Path(where).is_relative_to(venv), f"seqtrain imported from {where}"
    found = run(bin_dir / "python", "-c", (
        "import importlib.util as u; "
        f"print(*[m for m in {TEST_TOOLS!r} if u.find_spec(m)])"
    ), cwd=cwd).split()  # fmt: skip
    assert not found, f"the user install sees the test tools {found}"


if __name__ == "__main__":
    main()
