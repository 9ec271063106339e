"""Test-side client of the CUDA-on-CPU layer: runs the real CUDA launchers on the CPU.

``Device(variant)`` starts ``worker.py`` in a subprocess with the variant's library (built on
demand by build.py; libasan preloaded for ``asan``) and forwards calls to it. Tensors travel as
the bytes their strides reach, so every device allocation is exactly as large as the tensor
(ASan catches any access past it). A failed launch (``__trap()``, a divergent barrier, a bad
warp mask, a data race, an invalid configuration) raises :class:`DeviceError` with the
runtime's report; a crash of the worker (an ASan or UBSan report) raises :class:`WorkerCrashed`
with its stderr, and the next call starts a fresh worker.
"""
from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import build as build_module

HERE = Path(__file__).resolve().parent

REQUEST_TIMEOUT_S = 900

# Every kernel instantiation launched through any Device in this process, with the largest block
# (threads) it was launched with (for the coverage and launch-bounds test).
LAUNCHED: dict[str, int] = {}

# DType of csrc/common/dtype.h
_TORCH_TO_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class DeviceError(AssertionError):
    """A launch failed on the simulated device (the message is the runtime's report)."""


class WorkerCrashed(AssertionError):
    """The worker process died (the message holds its stderr: a sanitizer report)."""


@dataclass
class Result:
    rc: int
    buffers: list[bytes]
    out: list
    failures: str
    launch_log: str

    def kernels(self) -> list[str]:
        """Names of the kernel instantiations launched, in order (library calls and refused
        launches excluded)."""
        return [name for name, _ in self.launches_with_threads()]

    def launches_with_threads(self) -> list[tuple[str, int]]:
        """(kernel instantiation, threads per block) of every launch, in order."""
        launches = []
        for line in self.launch_log.splitlines():
            fields = line.split("\t")
            if len(fields) == 5 and fields[4] == "ok":
                x, y, z = (int(v) for v in fields[2].split(","))
                launches.append((fields[0], x * y * z))
        return launches


def asan_runtime() -> str:
    return subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()


class Device:
    """One simulated sm_90 device served by a worker process running `variant`'s library."""

    def __init__(self, variant: str = "asan") -> None:
        self.variant = variant
        self.library = build_module.build(variant)
        self._process: subprocess.Popen | None = None
        self._stderr = None
        atexit.register(self.close)

    def _start(self) -> None:
        env = dict(os.environ)
        if self.variant == "asan":
            env["LD_PRELOAD"] = asan_runtime()
            env["ASAN_OPTIONS"] = ("detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0:"
                                   "allocator_may_return_null=0:verify_asan_link_order=0")
            env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), str(self.library)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)

    def close(self) -> None:
        if self._process is not None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=30)
            except Exception:
                self._process.kill()
            self._process = None

    def _request(self, method: str, **kwargs):
        if self._process is None or self._process.poll() is not None:
            self._start()
        data = pickle.dumps((method, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._process.stdin.write(struct.pack("<Q", len(data)) + data)
            self._process.stdin.flush()
            ready, _, _ = select.select([self._process.stdout], [], [], REQUEST_TIMEOUT_S)
            if not ready:  # a hung launch: the runtime's own limits should have ended it
                self._process.kill()
            header = self._process.stdout.read(8)
        except BrokenPipeError:
            header = b""
        if len(header) < 8:
            returncode = self._process.wait(timeout=30)
            self._stderr.seek(0)
            report = self._stderr.read().decode(errors="replace")
            self._process = None
            raise WorkerCrashed(f"the CUDA-on-CPU worker ({self.variant}) died with exit code "
                                f"{returncode}:\n{report[-20000:]}")
        (size,) = struct.unpack("<Q", header)
        reply = pickle.loads(self._process.stdout.read(size))
        if "error" in reply:
            raise RuntimeError(f"CUDA-on-CPU worker: {reply['error']}")
        return reply["ok"]

    def call(self, function: str, args: list, *, seed: int = 0, sm_major: int = 9, sm_count: int = 132,
             expect_success: bool = True) -> Result:
        reply = self._request("call", function=function, args=args, seed=seed, sm_major=sm_major,
                              sm_count=sm_count)
        result = Result(**reply)
        for name, threads in result.launches_with_threads():
            LAUNCHED[name] = max(LAUNCHED.get(name, 0), threads)
        if expect_success and (result.rc != 0 or result.failures):
            raise DeviceError(f"{function} returned cudaError {result.rc}:\n{result.failures}")
        return result

    def read_and_free(self, pointer: int, size: int) -> bytes:
        return self._request("read_and_free", pointer=pointer, size=size)


# ----------------------------------------------------------------------------------------------
# Tensors <-> device buffers
# ----------------------------------------------------------------------------------------------
def span(size: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Number of elements a strided view reaches (non-negative strides)."""
    if any(s == 0 for s in size):
        return 0
    return 1 + sum((n - 1) * st for n, st in zip(size, stride))


def poison_byte(dtype: torch.dtype) -> int:
    """0xff for floating types (NaN), 0x80 for integers (0x80808080: never a valid index)."""
    return 0xff if dtype.is_floating_point else 0x80


def to_buffer(t: torch.Tensor, lead: int | None = None) -> tuple:
    """("buf", bytes, offset): the elements t's strides reach, the ones between them that t does
    not hold poisoned. The allocation (256-byte aligned) starts `lead` elements before t's first
    element; by default as many as put t's data pointer where it is in its own storage modulo
    256 bytes, as a CUDA allocation would (an fp16 view at storage offset 4 is 8-byte aligned)."""
    if lead is None:
        lead = t.storage_offset() % max(256 // t.element_size(), 1)
    n = span(tuple(t.shape), t.stride())
    flat = torch.full(((n + lead) * t.element_size(),), poison_byte(t.dtype), dtype=torch.uint8)
    typed = flat.view(t.dtype)
    if t.numel():
        torch.as_strided(typed, tuple(t.shape), t.stride(), lead).copy_(t)
    return ("buf", flat.numpy().tobytes(), lead * t.element_size())


def poison_buffer(numel: int, dtype: torch.dtype) -> tuple:
    """An output buffer of poison_byte(dtype) bytes."""
    return ("buf", bytes([poison_byte(dtype)]) * (numel * torch.empty((), dtype=dtype).element_size()))


def from_bytes(data: bytes, dtype: torch.dtype, size, stride=None) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype) if data else torch.empty(0, dtype=dtype)
    if stride is None:
        return flat.reshape(size).clone()
    return torch.as_strided(flat, tuple(size), tuple(stride)).clone()


def device_dtype(dtype: torch.dtype) -> int:
    return _TORCH_TO_DTYPE[dtype]
