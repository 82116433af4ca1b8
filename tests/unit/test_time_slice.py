"""The API threads' short scheduler slice (gateway/time_slice.py), in a fresh interpreter each time so that
pytest's own threads keep theirs: the slice is set for every thread, inherited by new threads and by child
processes, except those started under `DefaultSlice`; where the kernel does not take a slice request the log
line says so and nothing changes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_settings

PROBE = r"""
import json, subprocess, sys, threading
from gateway import time_slice

before = time_slice.slice_ns()
idle = threading.Event()
old = threading.Thread(target=idle.wait)  # a thread that exists before the call
old.start()
said = time_slice.shorten(100)
seen = {}
new = threading.Thread(target=lambda: seen.setdefault("new", time_slice.slice_ns()))
new.start(); new.join()
child = [sys.executable, "-c", "from gateway import time_slice; print(time_slice.slice_ns())"]
plain = int(subprocess.check_output(child))
with time_slice.DefaultSlice():
    default = int(subprocess.check_output(child))
print(json.dumps({"before": before, "said": said, "main": time_slice.slice_ns(),
                  "old": time_slice.slice_ns(old.native_id), "new": seen["new"], "child": plain,
                  "default_child": default}))
idle.set()
"""


def probe() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_every_thread_and_child_gets_the_short_slice_except_a_child_started_under_default_slice():
    seen = probe()
    if seen["said"] == "100 µs":
        assert seen["before"] != 100_000
        assert seen["main"] == seen["old"] == seen["new"] == seen["child"] == 100_000
        assert seen["default_child"] == seen["before"]  # the kernel's default again
    else:  # an older kernel (before 6.12) or another system: said why, changed nothing
        assert seen["said"].startswith("the kernel's default (")
        assert seen["main"] == seen["old"] == seen["new"] == seen["child"] == seen["default_child"] == seen["before"]


def test_zero_leaves_the_kernel_default():
    from gateway import time_slice

    assert time_slice.shorten(0) == "the kernel's default (http_slice_us is 0)"


@pytest.mark.parametrize("value", [-1, 50, 100_001])
def test_a_slice_out_of_the_kernels_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match="http_slice_us"):
        load_settings(None, env={"GATEWAY_HTTP_SLICE_US": str(value)})


@pytest.mark.parametrize("value", [0, 100, 100_000])
def test_a_slice_in_range_or_zero_is_accepted(value):
    assert load_settings(None, env={"GATEWAY_HTTP_SLICE_US": str(value)}).http_slice_us == value
