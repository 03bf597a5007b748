"""Durable async jobs, backend-neutral: records, stores (SQLite, PostgreSQL), the queue runner.

Requests go in as `NewJob`s (an opaque payload an executor knows how to run); `JobService`
claims them from a `JobStore` under a lease, runs them through the executor registered for
their kind, retries, expires and reports them. Nothing here knows HTTP or a backend.
"""
