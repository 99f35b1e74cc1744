"""Accuracy and compute studies: `python -m experiments.NAME` trains the recipes in recipes/;
results in experiments/results/, committed models in experiments/models/, write-ups in
docs/benchmarks/."""
