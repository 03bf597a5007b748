"""Telemetry shared by replicas and the HTTP edge: metric families and their accumulators.

It sits below `servekit._replica` (it knows nothing of replicas, runtimes or HTTP), so every
layer can record into it and the edge can expose what it holds.
"""
