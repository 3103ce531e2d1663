"""The collaborative decoder under a name nothing else uses: `from codevar import CollaborativeDecoder` works from
any notebook, debugger or script that has the repository on sys.path.

The package is `code/` (the published layout), which is also the name of a standard-library module that IPython
(every Jupyter kernel) and pdb import at start-up. When that happened before the repository was put on sys.path,
`import code` returns the standard module. Importing this module puts the repository's package in its place in
sys.modules (the package re-exports the standard module's names, so consoles and debuggers keep working), after
which `from code import ...` and `import code.fast` work too.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent / "code"


def repository_code() -> ModuleType:
    """The repository's `code` package, loaded (and registered as `code`) if another module holds that name."""
    loaded = sys.modules.get("code")
    if loaded is not None and Path(getattr(loaded, "__file__", None) or ".").resolve().parent == PACKAGE:
        return loaded
    spec = importlib.util.spec_from_file_location("code", PACKAGE / "__init__.py",
                                                  submodule_search_locations=[str(PACKAGE)])
    module = importlib.util.module_from_spec(spec)
    previous, sys.modules["code"] = loaded, module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop("code", None)
        else:
            sys.modules["code"] = previous
        raise
    return module


_code = repository_code()
__all__ = list(_code.__all__)
globals().update({name: getattr(_code, name) for name in __all__})
