"""Telemetry shared by the HTTP edge and every replica: metric families and their accumulators,
traces and request-aware logs.

It sits below `servekit._replica` (it knows nothing of replicas, runtimes or HTTP), so every
layer can record into it and the edge can expose what it holds.
"""
