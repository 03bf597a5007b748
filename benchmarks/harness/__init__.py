"""Harness used by ``benchmarks/run.py``: wrk driver, server processes, probes, report."""
