"""Speed benchmarks, one command per measured figure: `python -m bench.NAME` (results in
bench/results/, write-ups in docs/benchmarks/)."""
