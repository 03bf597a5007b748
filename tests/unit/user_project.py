"""A throwaway project of user modules in a temporary folder (the `project` fixture makes one)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from textwrap import dedent
from types import ModuleType


class UserProject:
    """Files written under `root`, which is first on `sys.path`; their modules are forgotten after."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, relative: str, source: str) -> Path:
        """Write `source` (dedented) to `root/relative`; returns the resolved path."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(source).lstrip())
        return path.resolve()

    def load(self, name: str) -> ModuleType:
        """Import module `name` afresh (after forgetting every module of the project)."""
        self.forget()
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def load_more(self, name: str) -> ModuleType:
        """Import module `name` too, keeping the project's modules imported so far."""
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def forget(self) -> None:
        """Drop the project's modules from `sys.modules`."""
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if isinstance(file, str) and Path(file).resolve().is_relative_to(self.root.resolve()):
                del sys.modules[name]
