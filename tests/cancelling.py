"""Helper for the engines' cancellation tests: start a long generation, cancel it, measure the CPU it still used."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# CPU seconds a cancelled request may still cost (from the cancel to 1 s after the call returned). The requests
# these tests cancel would run for tens of CPU seconds more, so this bound tells "stopped" from "kept going";
# how fast the stop is (the 1 s) is a benchmark figure, measured on a quiet machine by
# scripts/bench_engines.py (the cancel row), not a timed test on a shared CI box.
STOPPED_CPU_S = 3.0


def cancel_after(
    generate: Callable[[threading.Event], Any], delay: float, cpu: Callable[[], float] = time.process_time
) -> tuple[Any, float]:
    """Run ``generate(cancel_event)`` on a thread, set the event after ``delay`` seconds and return its result and
    the CPU seconds (``cpu()``: this process's by default) used from the cancel to 1 s after it returned (anything
    still running in the background shows up in that second)."""
    stop = threading.Event()
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(generate(stop)))
    worker.start()
    time.sleep(delay)
    assert worker.is_alive(), "finished before the cancel: the test proves nothing"
    before = cpu()
    stop.set()
    worker.join(60)
    time.sleep(1.0)
    return out[0], cpu() - before
