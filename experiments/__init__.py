"""Experiments: each module has run(...) -> result dataclass and runs as python -m experiments.NAME."""
