"""Collaborative Decoding (CoDe) of VAR models.

This package is named `code` as in the published layout, which shadows Python's standard `code` module when
scripts run from the repository root. `pdb`, `python -i` and `pytest --pdb` import `code.InteractiveConsole`
and friends, so the standard module's public names are re-exported here.
"""
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

from .collaborative import CollaborativeDecoder, chain_stops, collaborative_generate  # noqa: E402
from .editing import box_mask, inpaint, make_edit, token_masks  # noqa: E402

__all__ = ["CollaborativeDecoder", "collaborative_generate", "chain_stops", "inpaint", "make_edit", "token_masks",
           "box_mask", "InteractiveInterpreter",
           "InteractiveConsole", "interact", "compile_command"]
