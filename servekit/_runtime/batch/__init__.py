"""Offline batch scoring: a file of rows in, the app's answer for each row out, in input order.

`inputs` reads JSONL, CSV and Parquet in fixed-size chunks (pyarrow, memory flat); `calls`
turns a row into a call of the ingress method; `outputs` writes each finished chunk as a part
file (the checkpoint) and merges the parts at the end; `runner` drives the local runtime. The
Ray Data path lives with the Ray backend (`servekit._runtime.ray.batch`).
"""
