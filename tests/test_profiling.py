"""visattn.profiling: the interleaved timing's call order, FLOPs of a convolution and a matmul by hand,
and the peak-memory meter against a known allocation."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from visattn.profiling import MEMORY_ENV, count_flops, interleaved_times


def test_interleaved_times_warm_up_then_rotate_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_times(fns, reps=4, warmup=2)
    assert calls[:6] == list("abcabc")  # two warm-up rounds, in order
    assert calls[6:] == list("abc" "bca" "cab" "abc")  # each round starts one further down
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_count_flops_of_a_convolution_and_a_linear_layer_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(2, 3, 5, 7)) == 2 * (2 * 8 * 5 * 7) * (3 * 3 * 3)
    with torch.device("meta"):
        linear = nn.Linear(16, 4)
        assert count_flops(linear, torch.empty(10, 16)) == 2 * 10 * 16 * 4


MEASURE_64_MIB = """
import json, torch
from visattn.profiling import PeakMemoryMeter
meter = PeakMemoryMeter(torch.device("cpu"))
meter.start()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
print(json.dumps({"peak": meter.peak_mb(), "method": meter.method}))
"""


def test_peak_memory_meter_sees_a_tensor_allocated_after_start():
    # a fresh process, as the meter is used (compare, benchmarks): in a long-lived one, pages that
    # other threads or freed heap blocks give back meanwhile would blur a 64 MiB step
    out = subprocess.run([sys.executable, "-c", MEASURE_64_MIB], env=MEMORY_ENV | dict(os.environ),
                         capture_output=True, text=True, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    if measured["method"] == "ru_maxrss":
        pytest.skip("without /proc the peak of a fresh process only")
    assert 60 <= measured["peak"] < 200
