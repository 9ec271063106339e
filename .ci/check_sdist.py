"""CI check of the sdist (run by .ci/run): it holds every file a build needs and no build output.

Usage: python check_sdist.py dist/deeplabv2_ext-X.tar.gz   (from the repository root: what is
required is read from `git ls-files`). Prints what it checked; exit status 1 on failure.
"""
from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile

# Tracked files that do not ship: CI's own scripts and the benchmark results (MANIFEST.in).
NOT_SHIPPED = [".ci/*", ".gitignore", "benchmarks/results/*"]
# What setuptools writes into every sdist besides the tracked files.
GENERATED = ["PKG-INFO", "setup.cfg", "*.egg-info/*"]


def matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def main() -> int:
    with tarfile.open(sys.argv[1]) as sdist:
        shipped = {member.name.split("/", 1)[1] for member in sdist.getmembers()
                   if member.isfile() and "/" in member.name}
    tracked = set(subprocess.run(["git", "ls-files"], check=True, capture_output=True,
                                 text=True).stdout.split())
    required = {path for path in tracked if not matches(path, NOT_SHIPPED)}
    missing = sorted(required - shipped)
    # Anything else is a build output or a local file (untracked, or a result left out).
    stray = sorted(path for path in shipped - required if not matches(path, GENERATED))
    csrc = sorted(path for path in required if path.startswith("csrc/"))
    print(f"{sys.argv[1]}: {len(shipped)} files; {len(required)} tracked files required, "
          f"{len(csrc)} of them under csrc/")
    for path in missing:
        print(f"FAILED missing {path}", file=sys.stderr)
    for path in stray:
        print(f"FAILED must not ship {path}", file=sys.stderr)
    return 1 if missing or stray else 0


if __name__ == "__main__":
    sys.exit(main())
