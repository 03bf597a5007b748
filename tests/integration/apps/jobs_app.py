"""An app of short async jobs, for the restart and data-directory tests of `servekit serve`."""

from __future__ import annotations

import time
from typing import Any

import servekit as sk


@sk.deployment
class Jobs:
    @sk.endpoint("/job", mode="async", jobs=sk.JobOptions(concurrency=4))
    def job(self, n: int) -> dict[str, Any]:
        time.sleep(0.05)
        return {"n": n, "attempt": sk.job_context().attempt}


app = Jobs.bind()
