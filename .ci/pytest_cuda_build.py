"""pytest plugin for .ci/run's "test suite against the CUDA build" stage.

Loaded with `-p pytest_cuda_build` (PYTHONPATH=.ci). Once the test modules are imported, it
checks that the deeplabv2_ext they imported is the CUDA build installed in this interpreter's
site-packages (not the source folder, not another environment's CPU build) and stops the run
with exit status 3 otherwise.
"""
from __future__ import annotations

import os
import sys
import sysconfig

import pytest


def pytest_collection_finish(session):
    module = sys.modules.get("deeplabv2_ext")
    if module is None:
        pytest.exit("the collected tests did not import deeplabv2_ext", returncode=3)
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    package_dir = os.path.realpath(os.path.dirname(module.__file__))
    cuda = module.cuda_kernels_available()
    print(f"\n[cuda-build plugin] tests import deeplabv2_ext from {package_dir}, "
          f"cuda_kernels_available()={cuda}")
    if not package_dir.startswith(site + os.sep):
        pytest.exit(f"deeplabv2_ext imported from {package_dir}, not from {site}", returncode=3)
    if cuda is not True:
        pytest.exit("deeplabv2_ext.cuda_kernels_available() is not True", returncode=3)
