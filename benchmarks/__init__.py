"""DermEdge benchmarks: speed, accuracy and memory of every model in ``models/``, side by side.

    python -m benchmarks --data ../shared/data/ham10000      # full run, writes benchmarks/results/
    python -m benchmarks --quick                              # smoke run (tests)
"""


class Skipped(RuntimeError):
    """A section that cannot run here (no data, no broker, no Keras); the message says why."""
