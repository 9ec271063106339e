"""build_backend/deeplabv2_ext_backend.py: the wheel hooks see the installed torch inside pip's
isolated build, and stop with one line without torch (CI runs the real `pip install .` both ways)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

BACKEND_DIR = Path(__file__).resolve().parents[1] / "build_backend"
sys.path.insert(0, str(BACKEND_DIR))
import deeplabv2_ext_backend as backend  # noqa: E402

# What pip's isolation does to the hook's interpreter (pip/_internal/build_env.py): a
# sitecustomize on PYTHONPATH takes the interpreter's site-packages off sys.path and adds the
# build environment's (here: a folder with links to this setuptools), PYTHONNOUSERSITE=1 hides
# the user site.
PIP_LIKE_SITECUSTOMIZE = textwrap.dedent("""
    import site, sys
    hidden = set(site.getsitepackages())
    sys.path[:] = [path for path in sys.path if path not in hidden]
    site.addsitedir({build_env!r})
""")


def _run_isolated(tmp_path, code):
    import setuptools

    build_env = tmp_path / "build-env"
    build_env.mkdir(exist_ok=True)
    for name in ("setuptools", "_distutils_hack", "pkg_resources"):
        target, link = Path(setuptools.__file__).parents[1] / name, build_env / name
        if target.exists() and not link.is_symlink():
            link.symlink_to(target)
    (tmp_path / "sitecustomize.py").write_text(PIP_LIKE_SITECUSTOMIZE.format(build_env=str(build_env)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONNOUSERSITE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True)


def test_hooks_see_the_installed_torch_in_an_isolated_build(tmp_path):
    hidden = _run_isolated(tmp_path, "import torch")
    assert hidden.returncode != 0 and "No module named 'torch'" in hidden.stderr  # the isolation
    found = _run_isolated(tmp_path, textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(BACKEND_DIR)!r})
        isolated = list(sys.path)
        import deeplabv2_ext_backend as backend
        backend.use_installed_torch()
        import torch
        assert sys.path[:len(isolated)] == isolated, "the isolated entries must come first"
        print(torch.__file__)
    """))
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == torch.__file__  # the torch this interpreter has, no other


def test_no_torch_stops_with_one_line(monkeypatch):
    monkeypatch.setattr(backend, "interpreter_sys_path", lambda: [])
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
    with pytest.raises(SystemExit) as stop:
        backend.get_requires_for_build_wheel()
    message = str(stop.value)
    assert "\n" not in message and "install PyTorch first" in message
    assert "pip install torch==" in message and "https://pytorch.org/get-started/locally/" in message
    assert sys.executable in message


def test_sdist_hooks_are_setuptools_own():
    from setuptools import build_meta

    assert backend.build_sdist is build_meta.build_sdist
    assert backend.get_requires_for_build_sdist is build_meta.get_requires_for_build_sdist


def test_missing_or_old_setuptools_stops_with_one_line(monkeypatch):
    import setuptools

    monkeypatch.setattr(setuptools, "__version__", "65.5.0")
    for module in ("setuptools.command.bdist_wheel", "wheel.bdist_wheel"):  # as in 65.5 alone
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as stop:
        backend._setuptools_build_meta()
    assert "\n" not in str(stop.value) and "has setuptools 65.5.0" in str(stop.value)
    assert "pip install 'setuptools>=70.1' ninja" in str(stop.value)
    monkeypatch.setitem(sys.modules, "setuptools", None)
    with pytest.raises(SystemExit, match="has no setuptools"):
        backend._setuptools_build_meta()


def _fake_interpreter(tmp_path, body):
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_interpreter_sys_path_ignores_other_output_and_fails_in_one_line(tmp_path, monkeypatch):
    noisy = _fake_interpreter(tmp_path, f'echo "a .pth file printed this"; {sys.executable} "$@"; '
                                        f'status=$?; echo "and this at exit"; exit $status')
    monkeypatch.setattr(backend.sys, "executable", noisy)
    assert os.path.dirname(os.path.dirname(torch.__file__)) in backend.interpreter_sys_path()
    broken = _fake_interpreter(tmp_path, 'echo "boom: no such thing" >&2; exit 3')
    monkeypatch.setattr(backend.sys, "executable", broken)
    with pytest.raises(SystemExit) as stop:
        backend.interpreter_sys_path()
    assert "\n" not in str(stop.value) and "boom: no such thing" in str(stop.value)
