"""What a new user types first: `--version`, `--help` listing `--config`, `--config=FILE`, and
`--print-config` showing the resolved config (command-line flags over the file over defaults)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import seqtrain
from data_gen.cli import main as data_main
from seqtrain.cli import main

Main = Callable[[list[str]], None]


def run(main: Main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stdout of `main(argv)` (0 when it returns)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


@pytest.mark.parametrize(("main", "prog"), [(main, "seqtrain"), (data_main, "seqtrain-data")])
def test_version(main: Main, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(main, ["--version"], capsys) == (0, f"{prog} {seqtrain.__version__}\n")
    code, overview = run(main, ["--help"], capsys)
    assert code == 0 and f"{prog} --version" in overview


@pytest.mark.parametrize("module", ["seqtrain.cli", "data_gen.cli"])
def test_version_and_overview_load_no_torch(module: str) -> None:
    """Each command imports its heavy modules when it runs, so these answer at once."""
    code = (
        f"import sys; from {module} import main; main(['--version']); main(['--help']); "
        "print(*sorted({'torch', 'tyro', 'PIL'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == ""


@pytest.mark.parametrize(("main", "command"), [(main, "train"), (data_main, "generate")])
def test_help_lists_the_config_file_flags(
    main: Main, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(main, [command, "--help"], capsys)
    assert code == 0
    assert "--config PATH" in text and "--print-config" in text


def printed_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, text = run(main, ["train", *argv, "--print-config"], capsys)
    assert code == 0
    return yaml.safe_load(text)


def test_flags_override_the_file_wherever_config_stands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 0.01\ntrain:\n  epochs: 3\n")
    for argv in (
        ["--lr", "0.5", "--config", str(recipe)],
        [f"--config={recipe}", "--lr", "0.5"],
    ):
        config = printed_config(argv, capsys)
        assert config["optim"]["lr"] == 0.5  # the flag
        assert config["train"]["epochs"] == 3  # the file
        assert config["model"]["model"] == "reference"  # the default


def test_print_config_of_a_run_is_its_config_yaml_and_trains_nothing(
    inference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = (inference_run / "config.yaml").read_text()
    argv = ["train", "--config", str(inference_run / "config.yaml"), "--print-config"]
    assert run(main, argv, capsys) == (0, saved)
    out = tmp_path / "runs"
    printed_config(["--shards", str(tmp_path / "none"), "--output-dir", str(out)], capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config"], "--config needs a YAML file"),
        (["--config=", "--lr", "1"], "--config needs a YAML file"),
        (["--config", "a.yaml", "--config", "b.yaml"], "--config is given more than once"),
    ],
)
def test_bad_config_flag_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"seqtrain: error: {message}\n"
