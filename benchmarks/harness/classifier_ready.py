"""How long ``sk.run`` of ``examples/classifier/app.py`` takes beyond ``import torch``.

Run as ``python -m benchmarks.harness.classifier_ready`` in a fresh process
(``run.py`` does); prints one JSON object.  The clock starts right after
``import torch`` and stops when ``sk.run(app)`` returns the handle; the parts
(import servekit, import the app module, ``sk.run``) are reported too, and one
request is sent through the handle to check that the app really works.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()
import torch  # noqa: E402  (timed on purpose: the clock starts after this import)

_T_TORCH = time.perf_counter()

import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

APP_PATH = Path(__file__).resolve().parents[2] / "examples" / "classifier" / "app.py"


def load_module(path: Path) -> ModuleType:
    """Import ``path`` as a module, with its folder on ``sys.path`` (as the CLI does)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("classifier_app", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> dict[str, float | str]:
    """Time import servekit + import app + sk.run(app); return the timings (s)."""
    t_start = time.perf_counter()
    import servekit as sk

    t_sk = time.perf_counter()
    module = load_module(APP_PATH)
    t_app = time.perf_counter()
    handle = sk.run(module.app)
    t_run = time.perf_counter()
    try:
        answer = handle.classify(module.Req(text="Is this thing on?")).result(timeout=10)
    finally:
        handle.shutdown()
    return {
        "torch_version": torch.__version__,
        "import_torch_s": _T_TORCH - _T0,
        "import_servekit_s": t_sk - t_start,
        "import_app_s": t_app - t_sk,
        "sk_run_s": t_run - t_app,
        "ready_beyond_torch_s": t_run - t_start,
        "check_answer": str(answer),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
