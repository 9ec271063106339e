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

# pip shows only the output of a failed hook; these lines are what the user reads.
MISSING_TORCH = (
    "deeplabv2_ext compiles its C++/CUDA extension against the installed PyTorch, and the build's "
    "Python ({python}) cannot import torch. If torch is not installed: install PyTorch first "
    "(CPU: `pip install torch==2.13.0` here, or the CPU wheel of https://pytorch.org/get-started/"
    "locally/; CUDA: a CUDA build of torch from there), then run `pip install .` again. If it is "
    "installed where this build cannot see it (torch on PYTHONPATH, `python -m build`, uv): "
    "`pip install --no-build-isolation .` (`python -m build --no-isolation`, "
    "`uv pip install --no-build-isolation`)."
)
OLD_SETUPTOOLS = (
    "deeplabv2_ext's build needs setuptools>=70.1 (or >=64 with the wheel package) and ninja in "
    "{python}, which has {found}: `pip install 'setuptools>=70.1' ninja`, or build without "
    "--no-build-isolation (pip then provides them)."
)
NO_SYS_PATH = ("deeplabv2_ext's build could not read the sys.path of {python} (to find the "
               "installed torch): {reason}. `pip install --no-build-isolation .` needs no such "
               "step.")


def _can_build_wheels() -> bool:
    """Whether setuptools can make wheels here: its own bdist_wheel (70.1+) or the wheel package's."""
    for module in ("setuptools.command.bdist_wheel", "wheel.bdist_wheel"):
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            pass
    return False


def _setuptools_build_meta():
    """setuptools' backend, or a one-line exit when setuptools is missing or cannot build our
    wheel (only possible with --no-build-isolation: pip's isolated build installs what
    pyproject.toml asks for)."""
    try:
        import setuptools
        from setuptools import build_meta
    except ImportError:
        raise SystemExit(OLD_SETUPTOOLS.format(python=sys.executable, found="no setuptools")) from None
    if not hasattr(build_meta, "build_editable") or not _can_build_wheels():
        raise SystemExit(OLD_SETUPTOOLS.format(python=sys.executable,
                                               found=f"setuptools {setuptools.__version__}"))
    return build_meta


_setuptools = _setuptools_build_meta()

# Environment variables that pip's isolation sets to hide the interpreter's own packages.
_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE")


def interpreter_sys_path() -> list[str]:
    """The ``sys.path`` that this interpreter has when run plainly (its site-packages, user site
    and ``.pth`` entries), without the build isolation's variables."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARIABLES}
    # The marker finds our line even if a .pth file or sitecustomize prints something too.
    marker = "deeplabv2_ext-sys-path:"
    result = subprocess.run([sys.executable, "-c", f"import sys; print({marker!r}, repr(sys.path))"],
                            env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(marker)]
    if result.returncode != 0 or not lines:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise SystemExit(NO_SYS_PATH.format(python=sys.executable, reason=reason))
    # '' is the current folder that -c puts first: not one of the interpreter's paths.
    return [path for path in ast.literal_eval(lines[-1][len(marker):].strip()) if path]


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
