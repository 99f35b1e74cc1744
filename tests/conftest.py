"""Shared fixtures (the offline MNIST copy, a tiny generated shard set, one tiny trained run) and
the tiers: each top folder marks its tests (see tests/README.md). Helpers live in tests/support/."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Helpers' asserts explain themselves as the test modules' do.
pytest.register_assert_rewrite("support")

from support import REPO  # noqa: E402
from support.generate import tiny_generate_argv  # noqa: E402

TESTS = Path(__file__).resolve().parent
# The markers each top folder gives its tests; unit/ is the fast tier (`-m "not slow"`).
FOLDER_MARKERS = {
    "unit": (),
    "integration": ("slow",),
    "faults": ("slow", "faults"),
    "distributed": ("slow", "multiprocess"),
    "cluster": ("slow", "multiprocess"),
    "gpu": ("gpu",),
}


def pytest_configure(config: pytest.Config) -> None:
    """Under `-n`, each worker's torch (and every process its tests start) computes on one
    thread: the workers already fill the cores, and OpenMP threads beyond them spin-wait."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            tiers = ", ".join(FOLDER_MARKERS)
            raise pytest.UsageError(f"{item.path}: test files go in a tier folder: {tiers}")
        for name in FOLDER_MARKERS[folder]:
            item.add_marker(name)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """Accelerate's state is a process-wide singleton: a test that built an Accelerator must not
    hand its settings (precision, device) to the next one's in-process run."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST IDX files: $SEQTRAIN_MNIST_DIR, else ../shared/mnist beside the checkout."""
    path = Path(os.environ.get("SEQTRAIN_MNIST_DIR", REPO.parent / "shared" / "mnist"))
    if (
        not (path / "train-images-idx3-ubyte.gz").exists()
        and not (path / "train-images-idx3-ubyte").exists()
    ):
        pytest.fail(f"MNIST not found in {path}: set SEQTRAIN_MNIST_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_shards(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated, finalized tiny shard folder shared by the whole session: treat as read-only."""
    from data_gen.cli import main

    out = tmp_path_factory.mktemp("tiny_shards")
    main(tiny_generate_argv(mnist_dir, out))
    return out


@pytest.fixture(scope="session")
def inference_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch tiny run (W&B off) that the export, evaluate, predict and report tests
    share, trained once per session: treat as read-only."""
    from support.training import run_in_process, train_argv

    out = tmp_path_factory.mktemp("inference-runs")
    run_in_process(train_argv(tiny_shards, out, "tiny-for-inference", "--epochs", "3",
                              "--wandb-mode", "disabled"))  # fmt: skip
    return out / "tiny-for-inference"


@pytest.fixture(scope="session")
def unbroken_run(
    tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """`unbroken_run(*flags)`: the run folder of `support.training.resume_argv` + `flags` run to
    its end in a subprocess, once per session for each `flags` (the uninterrupted result an
    interrupted run must match): treat as read-only."""
    from support.training import resume_argv, run_to_end

    runs: dict[tuple[str, ...], Path] = {}

    def unbroken(*flags: str) -> Path:
        if flags not in runs:
            out = tmp_path_factory.mktemp("unbroken")
            run_to_end([*resume_argv(tiny_shards, out), *flags])
            runs[flags] = out / "job"
        return runs[flags]

    return unbroken


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Ends any process a test left behind: one still holding this session's output open keeps
    a CI runner waiting for its end long after pytest has reported. Under `-n`, each worker
    sweeps its own; the controller's children are the workers, which xdist ends itself."""
    import psutil

    if session.config.pluginmanager.hasplugin("dsession"):
        return

    leftovers = []
    for proc in psutil.Process().children(recursive=True):
        try:
            command = " ".join(proc.cmdline())
            if "multiprocessing.resource_tracker" in command or "wandb-core" in command:
                continue  # spawn's helper, W&B's service: each ends when this process does
            proc.kill()
            leftovers.append(f"{proc.pid} ({command[:120]})")
        except psutil.NoSuchProcess:
            pass
    if leftovers:
        print(f"\nconftest: killed {len(leftovers)} left by tests: {', '.join(leftovers)}")
