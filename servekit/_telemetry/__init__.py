"""Telemetry shared by the HTTP edge and every replica: metrics, traces and request-aware logs."""
