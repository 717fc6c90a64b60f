"""Package re-exports imported on first use (PEP 562), so that `import vitreduce` and the command line's
start imports no torch: `vitreduce --version`, `--help` and signal handling come first, torch only when a
command needs it (20-30 s on a busy node)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``exports`` ({name: the submodule that defines it})."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_


def after_import(module: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` once ``module`` is imported: now if it already is, else right after its import runs.

    `import vitreduce` registers the reduced model names with timm this way: at once where timm is already
    imported (`import timm, vitreduce`), else when timm is (`import vitreduce; import timm`), so that
    `timm.create_model(<reduced name>)` works after both while `import vitreduce` itself imports no torch.
    """
    if module in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(module, callback))


class _AfterImport(importlib.abc.MetaPathFinder):
    """A finder that steps aside for the real one and wraps its loader to call back after the module ran."""

    def __init__(self, module: str, callback: Callable[[], None]):
        self.module, self.callback = module, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)  # once; and so that the lookup below finds the real spec
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _CallingLoader(spec.loader, self.callback)
        return spec


class _CallingLoader(importlib.abc.Loader):
    def __init__(self, loader, callback: Callable[[], None]):
        self.loader, self.callback = loader, callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.callback()
