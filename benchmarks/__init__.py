"""remoteproc's benchmark suite: ``python3 benchmarks/run.py`` (see docs/performance.md)."""
