"""Register the D-LLM model types with transformers' Auto classes on `import spadec`.

Importing transformers and torch costs seconds, and most users of `spadec` (the
Snakefile reading its config, say) never touch a model. So: if transformers is already
imported, register now; otherwise register the moment something imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _register() -> None:
    initializing = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("spadec.dllm") and getattr(module.__spec__, "_initializing", False)
    ]
    if initializing:
        # transformers is being imported by one of our own modules; spadec.dllm.modeling
        # registers itself once it is imported (importing it now would be circular).
        return
    import spadec.dllm.modeling  # noqa: F401  (registers on import)


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """A one-shot finder: lets the normal machinery import `transformers`, then registers."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformersImport())
