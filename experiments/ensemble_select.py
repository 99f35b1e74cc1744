"""Choose an ensemble on val, then evaluate only the chosen one on test.

    .venv/bin/python -m experiments.ensemble_select --shards SHARDS \\
        --candidate h200=experiments/models/narrow_long_x6/seed0,...,seed5 \\
        --candidate cpu=RUNS/lean_long_seed0,...,RUNS/lean_long_seed5 \\
        --candidate both=h200+cpu \\
        [--tta-shift 0 1] [--select-by exact_match|loss] [--max-train-pflop 0.87] \\
        [--parallel 2] \\
        [--member-pflop experiments/models/narrow_long_x6/seed0=0.038 ...] \\
        [--json-out experiments/results/OUT.json]

Every candidate (a comma-separated list of run, checkpoint or export folders; `A+B` joins
earlier candidates) is evaluated on val by `seqtrain evaluate --split val` once per --tta-shift
(0: the slots as they are; N: 1 + 4N shifted views per member). The highest val exact match wins
(ties: the lower val loss, then the fewer inference FLOPs), or with --select-by loss the lowest
val loss (a proper score, far less grainy than exact match on 6,000 sequences; the trainer keeps
its best checkpoint by it too), and that one alone is evaluated on test, so test is read once,
after the choice. Candidates whose training compute is unknown or above --max-train-pflop are
not evaluated. Training compute: a run folder's is counted from
its metrics (optimizer steps x batch x counted FLOPs per sample); an export folder records none,
so give it with --member-pflop PATH=PFLOP (its model card's figure), else the total is unknown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import yaml

from bench.emit import cpu_name, emit_result
from experiments.time_to_accuracy import run_evaluate, samples_trained, shard_length_weights
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample


def parse_candidates(specs: list[str]) -> dict[str, list[str]]:
    """NAME=PATH,PATH,... or NAME=A+B (earlier candidates joined), in the order given."""
    candidates: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        if not sep or not name or not members:
            raise ValueError(f"--candidate {spec!r}: expected NAME=PATH[,PATH...] or NAME=A+B")
        if name in candidates:
            raise ValueError(f"--candidate {name!r} is given twice")
        if "+" in members:
            parts = members.split("+")
            unknown = [p for p in parts if p not in candidates]
            if unknown:
                raise ValueError(f"--candidate {name!r} joins unknown candidates {unknown}")
            candidates[name] = [m for p in parts for m in candidates[p]]
        else:
            candidates[name] = members.split(",")
        missing = [m for m in candidates[name] if not Path(m).is_dir()]
        if missing:
            raise ValueError(f"--candidate {name!r}: not folders: {missing}")
    return candidates


def parse_member_pflop(specs: list[str]) -> dict[str, float]:
    known = {}
    for spec in specs:
        path, sep, value = spec.rpartition("=")
        try:
            pflop = float(value)
        except ValueError:
            pflop = -1.0
        if not sep or not path or not pflop >= 0:
            raise ValueError(f"--member-pflop {spec!r}: expected PATH=PFLOP (a number >= 0)")
        known[str(Path(path))] = pflop
    return known


def member_train_pflop(member: str, known: dict[str, float]) -> float | None:
    """A run folder's counted training compute (on its own shards' lengths); an export's as
    given; else None (unknown)."""
    if str(Path(member)) in known:
        return known[str(Path(member))]
    run = Path(member)
    metrics, config = run / "metrics.jsonl", run / "config.yaml"
    if not (metrics.is_file() and config.is_file()):
        return None
    cfg = yaml.safe_load(config.read_text())
    shards = Path(cfg["data"]["shards"])
    if not (shards / "manifest.json").is_file():
        return None
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()]
    model = partial(build_model, cfg["model"]["model"])
    return (
        samples_trained(run, epochs) * flops_per_sample(model, shard_length_weights(shards)) / 1e15
    )


def choose(figures: list[dict], select_by: str = "exact_match") -> dict:
    """The highest val exact match (ties: lower val loss), or the lowest val loss (ties: higher
    val exact match); then fewer inference FLOPs."""
    if select_by == "loss":
        return min(
            figures,
            key=lambda f: (f["val_loss"], -f["val_exact_match"], f["inference_gflop_per_sample"]),
        )
    return max(
        figures,
        key=lambda f: (f["val_exact_match"], -f["val_loss"], -f["inference_gflop_per_sample"]),
    )


def within_budget(
    candidates: dict[str, list[str]], pflops: dict[str, list[float | None]], limit: float
) -> dict[str, list[str]]:
    """The candidates whose members' training compute is known and sums to at most limit."""
    kept = {}
    for name, members in candidates.items():
        if None in pflops[name] or sum(pflops[name]) > limit:
            print(
                f"{name}: training compute unknown or above {limit} PFLOP, left out",
                file=sys.stderr,
            )
        else:
            kept[name] = members
    return kept


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=PATHS")
    p.add_argument("--tta-shift", type=int, nargs="+", default=[0, 1], metavar="N")
    p.add_argument("--member-pflop", action="append", default=[], metavar="PATH=PFLOP")
    p.add_argument("--select-by", choices=("exact_match", "loss"), default="exact_match")
    p.add_argument(
        "--max-train-pflop",
        type=float,
        help="leave out candidates trained with more compute (or with unknown compute)",
    )
    p.add_argument(
        "--parallel", type=int, default=1, help="evaluate up to N candidates on val at once"
    )
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    if not (args.shards / "manifest.json").is_file():
        p.error(f"--shards {args.shards}: no manifest.json there")
    if args.parallel < 1:
        p.error(f"--parallel must be >= 1, got {args.parallel}")
    if min(args.tta_shift) < 0:
        p.error(f"--tta-shift must be >= 0, got {min(args.tta_shift)}")
    try:
        candidates = parse_candidates(args.candidate)
        known = parse_member_pflop(args.member_pflop)
    except ValueError as error:
        p.error(str(error))

    known_pflop = {
        name: [member_train_pflop(m, known) for m in ms] for name, ms in candidates.items()
    }
    if args.max_train_pflop is not None:
        candidates = within_budget(candidates, known_pflop, args.max_train_pflop)
        if not candidates:
            p.error(f"no candidate within --max-train-pflop {args.max_train_pflop}")
    with tempfile.TemporaryDirectory(prefix="ensemble-select-") as tmp:

        def on_val(name: str, shift: int) -> dict:
            members, pflops = candidates[name], known_pflop[name]
            out = Path(tmp) / f"{name}_{shift}_val.json"
            result = run_evaluate(args.shards, members, shift, "val", out)
            print(
                f"{name:<24} {len(members):>2} members x {result['tta_views']} views: val "
                f"{result['exact_match']:.4f} (loss {result['loss']:.4f})",
                file=sys.stderr,
            )
            return {
                "candidate": name,
                "members": members,
                "tta_shift": shift,
                "tta_views": result["tta_views"],
                "train_pflop": None if None in pflops else sum(pflops),
                "inference_gflop_per_sample": result["inference_gflop_per_sample"],
                "val_exact_match": result["exact_match"],
                "val_loss": result["loss"],
            }

        pairs = [(name, shift) for name in candidates for shift in args.tta_shift]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            figures = list(pool.map(lambda pair: on_val(*pair), pairs))
        chosen = choose(figures, args.select_by)
        test = run_evaluate(
            args.shards, chosen["members"], chosen["tta_shift"], "test", Path(tmp) / "test.json"
        )
    chosen_record = {
        **chosen,
        "test_exact_match": test["exact_match"],
        "test_loss": test["loss"],
        "test_length_accuracy": test["length_accuracy"],
        "test_position_accuracy": test["position_accuracy"],
        "test_argv": test["argv"],
    }
    print(
        f"chosen on val {args.select_by}: {chosen['candidate']} x {chosen['tta_views']} views: "
        f"test exact match {test['exact_match']:.4f}",
        file=sys.stderr,
    )
    record = {
        "bench": "ensemble_select",
        "cpu_model": cpu_name(),
        "shards": str(args.shards),
        "select_by": args.select_by,
        "max_train_pflop": args.max_train_pflop,
        "candidates": figures,
        "chosen": chosen_record,
    }
    emit_result(record, args.json_out)


if __name__ == "__main__":
    main()
