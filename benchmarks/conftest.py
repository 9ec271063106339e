"""pytest configuration for the ASPP benchmarks (pytest-benchmark).

Options (or environment variables):
  --aspp-device cpu|cuda      ASPP_BENCH_DEVICE    default: cuda when available, else cpu
  --aspp-shapes S1,S2,...     ASPP_BENCH_SHAPES    subset of the shapes of the chosen device
  --aspp-dtypes fp32,bf16     ASPP_BENCH_DTYPES    subset of the dtypes of the chosen device
  --aspp-no-compile           ASPP_BENCH_COMPILE=0 skip the torch.compile baseline
  --aspp-rounds N             ASPP_BENCH_ROUNDS    timed rounds per benchmark
At the end of the session the ratio ours / best baseline is printed per group.
"""
import importlib.util
import os

import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = []  # filled by test_bench_aspp.py, printed by pytest_terminal_summary


def _load_summarize():
    spec = importlib.util.spec_from_file_location("aspp_bench_summarize", os.path.join(_HERE, "summarize.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_addoption(parser):
    g = parser.getgroup("aspp-bench")
    g.addoption("--aspp-device", choices=["cpu", "cuda"], default=None, help="device to benchmark on")
    parser.getgroup("crf-bench").addoption("--crf-device", choices=["cpu", "cuda"], default=None,
                                           help="device of the DenseCRF benchmarks")
    g.addoption("--aspp-shapes", default=None, help="comma-separated shape names (S1,S2,S3 / CPU1)")
    g.addoption("--aspp-dtypes", default=None, help="comma-separated dtypes (fp32,bf16,fp16)")
    g.addoption("--aspp-no-compile", action="store_true", default=False, help="skip the torch.compile baseline")
    g.addoption("--aspp-rounds", type=int, default=None, help="timed rounds per benchmark")


def _opt(config, name, env):
    v = config.getoption(name)
    return v if v is not None else os.environ.get(env)


def _device(config, name, env):
    """The device chosen by option `name` or environment variable `env` (default: cuda if any)."""
    dev = _opt(config, name, env)
    if dev is None:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev not in ("cpu", "cuda"):
        raise pytest.UsageError(f"{name} / {env} must be cpu or cuda, got {dev!r}")
    if dev == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"{name} cuda requested but torch.cuda.is_available() is False")
    return dev


def bench_device(config):
    return _device(config, "--aspp-device", "ASPP_BENCH_DEVICE")


def bench_options(config):
    def split(v):
        return [s.strip() for s in v.split(",") if s.strip()] if v else None

    compile_env = os.environ.get("ASPP_BENCH_COMPILE", "1") not in ("0", "false", "no")
    rounds = config.getoption("--aspp-rounds") or (int(os.environ["ASPP_BENCH_ROUNDS"]) if os.environ.get("ASPP_BENCH_ROUNDS") else None)
    return {
        "device": bench_device(config),
        "shapes": split(_opt(config, "--aspp-shapes", "ASPP_BENCH_SHAPES")),
        "dtypes": split(_opt(config, "--aspp-dtypes", "ASPP_BENCH_DTYPES")),
        "compile": compile_env and not config.getoption("--aspp-no-compile"),
        "rounds": rounds,
    }


def pytest_configure(config):
    # read once; the benchmark modules get them from config (no `import conftest` needed)
    config.aspp_bench_options = bench_options(config)
    config.crf_bench_device = _device(config, "--crf-device", "CRF_BENCH_DEVICE")


@pytest.fixture
def record_result():
    def _record(**kw):
        RESULTS.append(kw)

    return _record


def pytest_report_header(config):
    opts = config.aspp_bench_options
    line = f"aspp-bench: device={opts['device']} shapes={opts['shapes'] or 'all'} dtypes={opts['dtypes'] or 'all'} compile={opts['compile']}"
    if opts["device"] == "cuda":
        line += f" ({torch.cuda.get_device_name(0)})"
    return [line]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    summarize = _load_summarize()
    terminalreporter.write_sep("=", "ours / best baseline per group")
    terminalreporter.write(summarize.format_markdown(RESULTS))
