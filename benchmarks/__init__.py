"""servekit benchmarks: workloads, baselines and the ``run`` harness (see README.md)."""
