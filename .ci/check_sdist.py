"""CI check of the sdist (run by .ci/run): it holds every file a build needs and no build output.

Usage: python check_sdist.py dist/deeplabv2_ext-X.tar.gz   (from the repository root: the
required files are read from `git ls-files`). Prints what it checked; exit status 1 on failure.
"""
from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile

# Tracked files the sdist must carry: the sources of _C (all of csrc/, not only what the CPU
# build compiles), the build backend and script, CMake for libtorch users, the packages, configs.
REQUIRED = ["csrc/*", "build_backend/*", "deeplabv2_ext/*.py", "python/deeplabv2/*.py",
            "python/deeplabv2/configs/*.yaml", "CMakeLists.txt", "README.md", "pyproject.toml",
            "setup.py", "MANIFEST.in", "requirements-dev.txt"]
# Build outputs and local results that must not ship.
FORBIDDEN = ["*.so", "*.o", "*.pyc", "*/__pycache__/*", "build/*", "*/build/*", "dist/*",
             "benchmarks/results/*", "deeplabv2_ext/_build_info.py"]


def main() -> int:
    with tarfile.open(sys.argv[1]) as sdist:
        names = [member.name.split("/", 1)[1] for member in sdist.getmembers()
                 if member.isfile() and "/" in member.name]
    shipped = set(names)
    tracked = subprocess.run(["git", "ls-files"], check=True, capture_output=True,
                             text=True).stdout.split()
    failures = []
    for pattern in REQUIRED:
        wanted = [path for path in tracked if fnmatch.fnmatch(path, pattern)]
        missing = sorted(set(wanted) - shipped)
        if not wanted or missing:
            failures.append(f"{pattern}: missing {missing or 'every file (none tracked?)'}")
        else:
            print(f"ok  {pattern}: all {len(wanted)} tracked files")
    for pattern in FORBIDDEN:
        stray = sorted(path for path in names if fnmatch.fnmatch(path, pattern))
        if stray:
            failures.append(f"{pattern}: must not ship {stray}")
    print(f"{sys.argv[1]}: {len(names)} files")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
