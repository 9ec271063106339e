"""The process that runs device code: loads a CUDA-on-CPU library and serves calls from the
harness (harness.py) over its stdin/stdout, one pickled request and reply at a time.

It imports nothing but numpy and ctypes, so that it can run with libasan preloaded. A request
names a driver function of the library and lists its arguments; buffers become exact-sized
device allocations (coc_device_alloc), filled from the request's bytes and read back after
the call. An AddressSanitizer report ends the process: the harness then reports its stderr.
"""
from __future__ import annotations

import ctypes
import pickle
import struct
import sys


OUT_TYPES = {"out_ptr": ctypes.c_void_p, "out_i64": ctypes.c_int64, "out_i32": ctypes.c_int32}


def _read_message(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    return pickle.loads(stream.read(size))


def _write_message(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


class Worker:
    def __init__(self, library: str) -> None:
        self.lib = ctypes.CDLL(library)
        self.lib.coc_device_alloc.restype = ctypes.c_void_p
        self.lib.coc_device_alloc.argtypes = [ctypes.c_size_t]
        self.lib.coc_device_free.argtypes = [ctypes.c_void_p]
        self.lib.coc_failures.restype = ctypes.c_char_p
        self.lib.coc_launch_log.restype = ctypes.c_char_p
        self.lib.coc_configure.argtypes = [ctypes.c_uint64, ctypes.c_int, ctypes.c_int]

    def _alloc(self, data: bytes) -> int:
        pointer = self.lib.coc_device_alloc(len(data))
        ctypes.memmove(pointer, data, len(data))
        return pointer

    def _read(self, pointer: int, size: int) -> bytes:
        return ctypes.string_at(pointer, size) if size else b""

    def call(self, function: str, args: list, seed: int, sm_major: int, sm_count: int) -> dict:
        """args: ("buf", bytes[, offset]) | ("null",) | ("i32"|"i64", int) | ("i32s"|"i64s", list) |
        ("str", str) | ("out_ptr",) | ("out_i64",) | ("out_i32",); returns rc, every buffer's
        bytes after the call, the out-pointers' values, the runtime's failures and launch log."""
        self.lib.coc_configure(seed, sm_major, sm_count)
        c_args, buffers, out_ptrs, keep = [], [], [], []
        for arg in args:
            kind = arg[0]
            if kind == "buf":  # ("buf", bytes[, byte offset of the pointer passed])
                pointer = self._alloc(arg[1])
                buffers.append((pointer, len(arg[1])))
                c_args.append(ctypes.c_void_p(pointer + (arg[2] if len(arg) > 2 else 0)))
            elif kind == "null":
                c_args.append(ctypes.c_void_p(None))
            elif kind == "i32":
                c_args.append(ctypes.c_int32(arg[1]))
            elif kind == "i64":
                c_args.append(ctypes.c_int64(arg[1]))
            elif kind in ("i32s", "i64s"):
                ctype = ctypes.c_int32 if kind == "i32s" else ctypes.c_int64
                array = (ctype * max(len(arg[1]), 1))(*arg[1])
                keep.append(array)
                c_args.append(array)
            elif kind == "str":
                c_args.append(ctypes.c_char_p(arg[1].encode()))
            elif kind in OUT_TYPES:  # a value the function writes through a pointer
                slot = OUT_TYPES[kind]()
                keep.append(slot)
                out_ptrs.append(slot)
                c_args.append(ctypes.byref(slot))
            else:
                raise ValueError(f"unknown argument kind {kind!r}")
        fn = getattr(self.lib, function)
        fn.restype = ctypes.c_int
        rc = fn(*c_args)
        result = {
            "rc": rc,
            "buffers": [self._read(p, n) for p, n in buffers],
            "out": [slot.value for slot in out_ptrs],
            "failures": self.lib.coc_failures().decode(errors="replace"),
            "launch_log": self.lib.coc_launch_log().decode(errors="replace"),
        }
        for pointer, _ in buffers:
            self.lib.coc_device_free(pointer)
        return result

    def read_and_free(self, pointer: int, size: int) -> bytes:
        data = self._read(pointer, size)
        self.lib.coc_device_free(pointer)
        return data


def main() -> None:
    worker = Worker(sys.argv[1])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    while True:
        request = _read_message(stdin)
        if request is None:
            return
        method, kwargs = request
        try:
            reply = {"ok": getattr(worker, method)(**kwargs)}
        except Exception as exc:  # reported to the test, the worker stays usable
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _write_message(stdout, reply)


if __name__ == "__main__":
    main()
