"""The bug-report printout: `python -m deeplabv2_ext` and `deeplabv2 env` (deeplabv2_ext.env)."""
import os
import subprocess
import sys
import types

import torch

import deeplabv2_ext
from deeplabv2.cli import main
from deeplabv2_ext import env


def _rows():
    return dict(env.collect())


def test_report_says_versions_build_and_threads():
    rows = _rows()
    assert rows["deeplabv2_ext"].startswith(deeplabv2_ext.__version__ + " ")
    assert rows["torch"].startswith(torch.__version__ + " ")
    assert rows["torch threads"].startswith(f"{torch.get_num_threads()} intra-op")
    assert rows["CRF CPU loops"] == deeplabv2_ext._extension.cpu_isa()
    built = deeplabv2_ext.cuda_kernels_available()
    assert rows["CUDA kernels"].startswith("built" if built else "not built")
    if env._build_info is not None:  # an installed build (setup.py wrote it)
        assert rows["_C built against torch"] == torch.__version__
        assert (env._build_info.CUDA_ARCH_LIST is not None) == built


def test_report_names_the_cuda_architectures_of_the_build(monkeypatch):
    monkeypatch.setattr(env._extension, "cuda_kernels_available", lambda: True)
    monkeypatch.setattr(env, "_build_info", types.SimpleNamespace(
        TORCH_VERSION=torch.__version__, CUDA_VERSION="13.0", CUDA_ARCH_LIST="8.0;9.0+PTX"))
    assert _rows()["CUDA kernels"] == "built with CUDA 13.0 for TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX"


def test_report_flags_a_torch_other_than_the_build(monkeypatch):
    monkeypatch.setattr(env, "_build_info", types.SimpleNamespace(
        TORCH_VERSION="1.0.0", CUDA_VERSION=None, CUDA_ARCH_LIST=None))
    assert _rows()["_C built against torch"].startswith(f"1.0.0 (MISMATCH: running with torch {torch.__version__}")


def test_python_m_deeplabv2_ext_and_deeplabv2_env_print_it(tmp_path, capsys):
    # outside the source tree, so that the installed package is imported
    out = subprocess.run([sys.executable, "-m", "deeplabv2_ext"], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"}).stdout
    assert main(["env"]) == 0
    printed = capsys.readouterr().out
    for text in (out, printed):
        rows = [line.split(" : ", 1) for line in text.strip().splitlines()]
        assert [name.strip() for name, _ in rows] == [name for name, _ in env.collect()]
        assert rows[0][1].startswith(deeplabv2_ext.__version__ + " ")


def test_a_c_extension_built_for_another_torch_fails_to_import_with_what_to_do(tmp_path):
    """_C that does not load (as after a torch upgrade: undefined symbols) under a torch other than
    the recorded one: `import deeplabv2_ext` says to rebuild, naming both versions."""
    code = (
        "import importlib.abc, sys, types\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'deeplabv2_ext._C':\n"
        "            raise ImportError('_C.so: undefined symbol: _ZN3c10fake')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "sys.modules['deeplabv2_ext._build_info'] = types.SimpleNamespace(TORCH_VERSION='1.0.0')\n"
        "import deeplabv2_ext\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert (f"deeplabv2_ext._C was built against torch 1.0.0, and this is torch {torch.__version__}: "
            "run `pip install .` again" in last), result.stderr
    assert "undefined symbol: _ZN3c10fake" in last
