"""Run a CUDA op on a side stream under schedules that make a launch on the wrong stream visible.

An op must enqueue all its work (kernels, copies, cuBLAS calls) on the current stream. Launching
on another stream (e.g. stream 0, the legacy default stream) gives the right answer whenever
everything is synchronised, so the tests use two schedules that leave no synchronisation to
hide behind; ``torch.cuda._sleep`` keeps one stream busy for about a second:

* ``late_inputs``: the side stream first sleeps, then writes the inputs (copies of them, zeros
  until then), then runs the op, all enqueued without waiting. A kernel launched on an idle
  other stream runs at once and reads the zeros.
* ``busy_default``: the default stream sleeps while the op runs on the side stream and its
  outputs are copied to the host from there. A kernel launched on the default stream waits for
  the sleep, so its result is missing from what the host reads. The schedule checks that the
  sleep was still running then (else it proved nothing).

Side streams from ``torch.cuda.Stream()`` are non-blocking: they never wait for the legacy
default stream implicitly. An op that waits on the host for its own stream (``.item()``, a copy
to the host) lets the side stream's sleep and copies finish before it launches the rest, so for
such ops (``host_syncs=True``: the CRF ops) only ``busy_default`` can catch a wrong stream.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

SCHEDULES = ("late_inputs", "busy_default")
# GPU clock cycles torch.cuda._sleep spins: about 1 s at the H100's / H200's ~2 GHz, far longer
# than the ops under test take to enqueue and run at the tests' sizes.
SLEEP_CYCLES = 2_000_000_000


def _to_host(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    return tuple(t.cpu() for t in outputs)


def run_on_side_stream(schedule: str, op: Callable[..., object],
                       inputs: Sequence[torch.Tensor],
                       host_syncs: bool = False) -> tuple[torch.Tensor, ...]:
    """``op(*inputs)`` (CUDA tensors in, a tensor or tensors out) on a fresh side stream under
    ``schedule``; returns its outputs on the host. Unless ``host_syncs`` (the op waits on the host
    for its stream), ``late_inputs`` checks that the whole op was enqueued while the side stream
    still slept (else it proved nothing)."""
    side = torch.cuda.Stream()
    if schedule == "late_inputs":
        staged = [torch.zeros_like(t) for t in inputs]
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            torch.cuda._sleep(SLEEP_CYCLES)
            for copy, source in zip(staged, inputs):
                copy.copy_(source)
            outputs = op(*staged)
        enqueued_while_sleeping = not side.query()
        torch.cuda.current_stream().wait_stream(side)  # the staged copies are freed after this
        host = _to_host(outputs)
        assert host_syncs or enqueued_while_sleeping, (
            "the side stream's sleep ended before the op was enqueued: the op waited on the host "
            "(pass host_syncs=True), or SLEEP_CYCLES is too short")
        return host
    if schedule == "busy_default":
        torch.cuda.synchronize()
        with torch.cuda.stream(torch.cuda.default_stream()):
            torch.cuda._sleep(SLEEP_CYCLES)
        with torch.cuda.stream(side):
            host = _to_host(op(*inputs))  # copies on the side stream, then waits for it
        still_sleeping = not torch.cuda.default_stream().query()
        torch.cuda.synchronize()
        assert still_sleeping, (
            "the default stream's sleep ended before the host read the op's results: the op "
            "synchronised with the default stream (a copy or memset on stream 0, a device sync), "
            "or SLEEP_CYCLES is too short")
        return host
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
