"""Builds the CUDA-on-CPU libraries: the real csrc/**/*.cu compiled by g++ as host C++.

Two variants, each one shared library ``build/<variant>/libcuda_on_cpu.so``:

* ``asan``: everything under AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds and
  misaligned accesses, overflow, ...). Load it into a process started with libasan preloaded
  (the harness does).
* ``race``: the kernel translation units are instrumented with GCC's ``-fsanitize=thread``
  pass, but libtsan is not linked: the instrumentation calls the race detector of
  ``src/runtime.cpp`` (built with ``COC_RACE_HOOKS``), which knows barriers, shared memory and
  device allocations.

Run ``python tests/cuda_on_cpu/build.py [asan|race ...]``; the harness calls :func:`build` and
rebuilds only when a source or a flag changed.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CSRC = REPO / "csrc"
BUILD_ROOT = Path(os.environ.get("CUDA_ON_CPU_BUILD_DIR", HERE / "build"))
VARIANTS = ("asan", "race")

COMMON = [
    "-std=c++17", "-O1", "-g", "-fPIC", "-ffp-contract=off", "-fno-omit-frame-pointer",
    "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unknown-pragmas",
    f"-I{HERE / 'include'}", f"-I{CSRC}",
]
# How nvcc sees device code: __CUDACC__, and the sm_90 branches of #if __CUDA_ARCH__ checks.
DEVICE = ["-x", "c++", "-DDLV2_CUDA_ON_CPU", "-D__CUDACC__", "-D__CUDA_ARCH__=900"]
SANITIZE = {
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "race": [],
}
KERNEL_ONLY = {"asan": [], "race": ["-fsanitize=thread"]}
RUNTIME_ONLY = {"asan": [], "race": ["-DCOC_RACE_HOOKS"]}
LINK = {"asan": ["-fsanitize=address,undefined"], "race": []}


def kernel_sources() -> list[Path]:
    """Every CUDA translation unit of the project plus the checker's planted kernels."""
    return sorted(CSRC.glob("**/*.cu")) + [HERE / "src" / "planted_kernels.cu"]


def _jobs(variant: str) -> list[tuple[Path, list[str]]]:
    jobs = [(src, COMMON + DEVICE + SANITIZE[variant] + KERNEL_ONLY[variant]) for src in kernel_sources()]
    jobs.append((HERE / "src" / "runtime.cpp", COMMON + SANITIZE[variant] + RUNTIME_ONLY[variant]))
    jobs.append((HERE / "src" / "driver.cpp", COMMON + DEVICE + SANITIZE[variant]))
    return jobs


def _fingerprint(variant: str) -> str:
    digest = hashlib.sha256(repr(_jobs(variant)).encode())
    for root in (CSRC, HERE / "include", HERE / "src"):
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in {".cu", ".cuh", ".h", ".cpp", ""}:
                digest.update(str(path).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def library_path(variant: str) -> Path:
    return BUILD_ROOT / variant / "libcuda_on_cpu.so"


def build(variant: str, jobs: int | None = None) -> Path:
    """Builds (if needed) and returns the shared library of `variant`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    out_dir = BUILD_ROOT / variant
    out_dir.mkdir(parents=True, exist_ok=True)
    library = library_path(variant)
    stamp = out_dir / "fingerprint"
    fingerprint = _fingerprint(variant)
    if library.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return library

    def compile_one(job: tuple[Path, list[str]]) -> Path:
        src, flags = job
        obj = out_dir / (src.relative_to(REPO).as_posix().replace("/", "_") + ".o")
        cmd = ["g++", *flags, "-c", str(src), "-o", str(obj)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"cuda_on_cpu ({variant}): compiling {src} failed:\n{' '.join(cmd)}\n{result.stderr}")
        if result.stderr.strip():
            sys.stderr.write(result.stderr)
        return obj

    workers = jobs or int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        objects = list(pool.map(compile_one, _jobs(variant)))
    cmd = ["g++", "-shared", *LINK[variant], "-o", str(library), *map(str, objects)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"cuda_on_cpu ({variant}): linking failed:\n{' '.join(cmd)}\n{result.stderr}")
    stamp.write_text(fingerprint)
    return library


if __name__ == "__main__":
    for name in sys.argv[1:] or VARIANTS:
        print(build(name))
