"""CI check of the real CUDA build of deeplabv2_ext on a GPU-less machine (run by .ci/run).

Run it with the CUDA venv's python from outside the repository root, so that `import
deeplabv2_ext` finds the installed package (with its compiled _C), not the source folder.
Usage: python check_cuda_build.py [--expect-cuda 13.0] [--expect-arch 80 --expect-arch 90]

Checks, each printed, exit status 1 when any fails:
  * deeplabv2_ext is imported from site-packages, not from a source tree;
  * torch.version.cuda is the expected CUDA version;
  * deeplabv2_ext.cuda_kernels_available() is True;
  * the namespace deeplabv2_ext has ops, and every one has a kernel registered for the CUDA
    dispatch key, except the ops that have a CompositeImplicitAutograd kernel: such a kernel
    serves every backend (it only calls other ops or, for cuda_kernels_available, takes no
    tensor at all), so those ops have, and need, no CUDA kernel of their own;
  * every op with a CPU kernel also has a CUDA kernel and vice versa;
  * _C embeds device code (an ELF cubin) for every expected sm_XX (read from its .nv_fatbin
    section), so TORCH_CUDA_ARCH_LIST was honoured.
"""
from __future__ import annotations

import argparse
import collections
import os
import struct
import sys
import sysconfig

PREFIX = "deeplabv2_ext::"
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND = {1: "PTX", 2: "ELF"}


def fatbin_entries(so_path: str) -> list[tuple[str, int]]:
    """(kind, sm) of every entry in the ELF file's .nv_fatbin section (ELF64, little endian)."""
    with open(so_path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{so_path}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + index * shentsize)
        return name, offset, size

    _, strtab_offset, _ = section(shstrndx)
    entries = []
    for index in range(shnum):
        name_offset, offset, size = section(index)
        end = data.index(b"\0", strtab_offset + name_offset)
        if data[strtab_offset + name_offset:end] != b".nv_fatbin":
            continue
        # The section holds one or more fatbins: header (magic, version, header size, payload
        # size), then entries, each with its own header (kind, header size, payload size, ...,
        # the sm number at byte 28).
        pos, section_end = offset, offset + size
        while pos + 16 <= section_end:
            magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
            if magic != FATBIN_MAGIC:
                pos += 8  # fatbins are 8-byte aligned; skip padding
                continue
            entry, fat_end = pos + header_size, pos + header_size + fat_size
            while entry < fat_end:
                kind, _unknown, entry_header_size, payload_size = struct.unpack_from(
                    "<HHIQ", data, entry)
                sm, = struct.unpack_from("<I", data, entry + 28)
                entries.append((FATBIN_KIND.get(kind, f"kind{kind}"), sm))
                entry += entry_header_size + payload_size
            pos = fat_end
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-cuda", default="13.0")
    parser.add_argument("--expect-arch", type=int, action="append", default=None,
                        help="sm number that must have an ELF cubin in _C (repeat); default 80, 90")
    args = parser.parse_args()
    expect_arch = args.expect_arch or [80, 90]

    import torch

    import deeplabv2_ext
    from deeplabv2_ext import _C

    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    package_dir = os.path.realpath(os.path.dirname(deeplabv2_ext.__file__))
    print(f"python {sys.executable}\ntorch {torch.__version__} from {torch.__file__}")
    print(f"deeplabv2_ext from {package_dir}\n_C {_C.__file__}")
    check(package_dir.startswith(site + os.sep),
          f"deeplabv2_ext is the installed copy (under {site})")
    check(torch.version.cuda == args.expect_cuda,
          f"torch.version.cuda == {args.expect_cuda!r} (is {torch.version.cuda!r})")
    check(deeplabv2_ext.cuda_kernels_available() is True,
          "deeplabv2_ext.cuda_kernels_available() is True")

    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(PREFIX))
    check(len(names) > 0, f"the {PREFIX[:-2]} namespace has ops ({len(names)})")

    def has(name: str, key: str) -> bool:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)

    rows = []
    for name in names:
        cpu, cuda = has(name, "CPU"), has(name, "CUDA")
        composite = has(name, "CompositeImplicitAutograd")
        if composite and not (cpu or cuda):
            result = "ok (CompositeImplicitAutograd: serves every device, no CUDA kernel needed)"
        elif cpu and cuda and not composite:
            result = "ok"
        else:
            result = "FAIL"
            failures.append(f"{name}: CPU={cpu} CUDA={cuda} CompositeImplicitAutograd={composite}")
        rows.append((name, cpu, cuda, composite, result))
    width = max([len("op")] + [len(r[0]) for r in rows])
    print(f"\n  {'op':<{width}}  CPU    CUDA   CompositeImplicit  result")
    for name, cpu, cuda, composite, result in rows:
        print(f"  {name:<{width}}  {cpu!s:<6} {cuda!s:<6} {composite!s:<18} {result}")
    print()

    entries = fatbin_entries(_C.__file__)
    counts = collections.Counter(entries)
    print("  device code in _C (.nv_fatbin entries): "
          + ", ".join(f"{kind} sm_{sm} x{n}" for (kind, sm), n in sorted(counts.items())))
    for sm in expect_arch:
        count = counts[("ELF", sm)]
        check(count > 0, f"_C has ELF cubins for sm_{sm} ({count})")

    if failures:
        print(f"\nCUDA build check FAILED ({len(failures)}):")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print("\nCUDA build check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
