"""Collaborative Decoding (CoDe) of VAR models: sampling, the scale loop, chains, the fast path, editing.

This package is named `code` as in the published layout, which shadows Python's standard `code` module when a
script runs from the repository root. Two consequences shape this file:

- `pdb`, `python -i` and `pytest --pdb` use `code.InteractiveConsole` and friends, so the standard module's public
  names are re-exported here.
- `import pdb` happens inside `import torch` in some releases (torch 2.4 imports pdb at the top of its
  __init__), which imports this package before torch has finished importing. So `import code` must not import
  torch: the package's own names are loaded on first use (PEP 562 `__getattr__`), not at import. Submodules
  (`code.decoder`, `code.fast`, ...) import normally.

In a notebook or a debugger session that imported the standard module before the repository was on sys.path,
`import codevar` (the root module) swaps this package in; `from codevar import ...` gives the same names.
"""
import importlib as _importlib
import importlib.util as _ilu
import os as _os
import sys as _sys
import sysconfig as _sysconfig


def _load_stdlib_code():
    path = _os.path.join(_sysconfig.get_paths()["stdlib"], "code.py")
    spec = _ilu.spec_from_file_location("_stdlib_code", path)
    module = _ilu.module_from_spec(spec)
    spec.loader.exec_module(module)
    _sys.modules.setdefault("_stdlib_code", module)
    return module


_std = _load_stdlib_code()
InteractiveInterpreter = _std.InteractiveInterpreter
InteractiveConsole = _std.InteractiveConsole
interact = _std.interact
compile_command = _std.compile_command

# name -> submodule that defines it, loaded on first access
_EXPORTS = {
    **dict.fromkeys(["CollaborativeDecoder", "collaborative_generate", "var_generate", "chain_stops",
                     "check_compatible"], "decoder"),
    **dict.fromkeys(["FastPath", "FastPathError", "is_out_of_memory"], "fast"),
    **dict.fromkeys(["FastPathMismatch", "CheckReport", "check_fast_path"], "fast_check"),
    **dict.fromkeys(["DecodeState", "TokenEdit", "run_scales"], "loop"),
    "SamplingConfig": "sampling",
    **dict.fromkeys(["inpaint", "make_edit", "expand_edit", "token_masks", "box_mask"], "editing"),
}
__all__ = [*_EXPORTS, "InteractiveInterpreter", "InteractiveConsole", "interact", "compile_command"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'code' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
