"""The wheel a user installs carries the version, the licence, both commands and only the two
packages users need (.ci/user_install.py installs it into a venv without the test tools)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import PurePosixPath

import pytest

import seqtrain
from support import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel as `python -m build` makes it: an sdist first, the wheel built from that (so no
    stale build/ folder of the checkout leaks in); offline, with the installed setuptools."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        check=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("seqtrain-*.whl")
    return zipfile.ZipFile(path)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [m for m in wheel.namelist() if m.startswith("seqtrain-") and m.endswith(name)]
    return wheel.read(member).decode()


def test_metadata_names_this_version_and_the_mit_licence(wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(dist_info(wheel, ".dist-info/METADATA"))
    assert metadata["Name"] == "seqtrain"
    assert metadata["Version"] == seqtrain.__version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (REPO / "LICENSE").read_text() in dist_info(wheel, ".dist-info/licenses/LICENSE")
    assert {"s3", "gcs", "http"} <= set(metadata.get_all("Provides-Extra"))
    # The test tools come only with [dev].
    plain = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in plain if r.startswith(("pytest", "hypothesis", "ruff"))], plain


def test_both_commands_are_console_scripts(wheel: zipfile.ZipFile) -> None:
    entry_points = dist_info(wheel, ".dist-info/entry_points.txt")
    assert "seqtrain = seqtrain.cli:main" in entry_points
    assert "seqtrain-data = data_gen.cli:main" in entry_points


def test_only_seqtrain_and_data_gen_are_shipped(wheel: zipfile.ZipFile) -> None:
    tops = {PurePosixPath(m).parts[0] for m in wheel.namelist() if ".dist-info/" not in m}
    assert tops == {"seqtrain", "data_gen"}
    assert "seqtrain/cli.py" in wheel.namelist()
    assert "data_gen/cli.py" in wheel.namelist()
