"""deeplabv2_ext's PEP 517 build backend: setuptools' ``build_meta``, building the extension
against the torch installed in the environment that the package is installed into.

``deeplabv2_ext._C`` is compiled against torch's headers and linked to its libraries, so it
must be built with the very torch it will run with. ``pip install .`` builds in an isolated
environment: it runs these hooks with the target interpreter (``sys.executable``) but takes that
interpreter's site-packages off ``sys.path`` and provides only the ``[build-system] requires``.
Listing torch there would compile against a fresh download, not the installed torch. So the
wheel hooks first put the interpreter's own ``sys.path`` back, *after* the isolated
environment's entries (its setuptools and ninja keep precedence), and stop with a one-line
message when torch is still not importable. ``--no-build-isolation`` needs nothing put back.
The sdist hooks need no torch: ``python -m build`` makes the sdist in a venv of its own.
"""
from __future__ import annotations

import ast
import functools
import importlib
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools

# pip shows only the output of a failed hook; this line is what the user reads.
MISSING_TORCH = (
    "deeplabv2_ext compiles its C++/CUDA extension against the installed PyTorch, and {python} "
    "has none: install PyTorch first (CPU: `pip install torch==2.13.0`; CUDA: a CUDA build of "
    "torch, see https://pytorch.org/get-started/locally/), then run `pip install .` again "
    "(python -m build, uv: add --no-isolation / --no-build-isolation so that the build sees it)."
)

# Environment variables that pip's isolation sets to hide the interpreter's own packages.
_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE")


def interpreter_sys_path() -> list[str]:
    """The ``sys.path`` that this interpreter has when run plainly (its site-packages, user site
    and ``.pth`` entries), without the build isolation's variables."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARIABLES}
    out = subprocess.run([sys.executable, "-c", "import sys; print(repr(sys.path))"],
                         env=env, check=True, capture_output=True, text=True).stdout
    # '' is the current folder that -c puts first: not one of the interpreter's paths.
    return [path for path in ast.literal_eval(out) if path]


def use_installed_torch() -> None:
    """Make the installed torch importable in this (possibly isolated) build, or stop with
    :data:`MISSING_TORCH`."""
    for path in interpreter_sys_path():
        if path not in sys.path:
            sys.path.append(path)
    importlib.invalidate_caches()
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        raise SystemExit(MISSING_TORCH.format(python=sys.executable)) from None


def _with_installed_torch(hook):
    """setuptools' ``hook``, run after :func:`use_installed_torch`."""
    @functools.wraps(hook)
    def hook_with_torch(*args, **kwargs):
        use_installed_torch()
        return hook(*args, **kwargs)
    return hook_with_torch


# The sdist hooks, unchanged: an sdist is the source, torch or not.
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
build_sdist = _setuptools.build_sdist

# The wheel and editable hooks (each runs in a process of its own): against the installed torch.
get_requires_for_build_wheel = _with_installed_torch(_setuptools.get_requires_for_build_wheel)
prepare_metadata_for_build_wheel = _with_installed_torch(_setuptools.prepare_metadata_for_build_wheel)
build_wheel = _with_installed_torch(_setuptools.build_wheel)
get_requires_for_build_editable = _with_installed_torch(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_editable = _with_installed_torch(
    _setuptools.prepare_metadata_for_build_editable)
build_editable = _with_installed_torch(_setuptools.build_editable)
