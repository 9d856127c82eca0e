"""The benchmark harness on the CPU: timings are ordered, inputs rotate, files round-trip."""

import json

import pytest
import torch

from effconv_ref.bench import (
    Peaks,
    Timing,
    benchmark,
    machine_info,
    measure_peaks,
    read_results,
    time_fn,
    write_results,
)

PEAKS = Peaks(bandwidth=1e10, flops=1e11, device="test CPU", how="made up for the tests")


def _inputs():
    return (torch.randn(64, 64),)


def test_time_fn_quartiles():
    timing = time_fn(lambda x: x @ x, _inputs, warmup=1, repeats=9)
    assert isinstance(timing, Timing)
    assert timing.repeats == 9
    assert 0 < timing.q25_s <= timing.median_s <= timing.q75_s
    assert "n=9" in str(timing)


def test_time_fn_rotates_inputs():
    seen = []
    made = []

    def make():
        x = torch.zeros(4)
        made.append(id(x))
        return (x,)

    time_fn(lambda x: seen.append(id(x)), make, warmup=0, repeats=8, rotate=4)
    assert len(made) == 4
    assert len(set(seen)) == 4
    assert set(seen) == set(made)
    # cycled in turn: no input is used twice in a row
    assert all(a != b for a, b in zip(seen, seen[1:]))


def test_time_fn_accepts_a_lone_tensor():
    seen = []
    time_fn(lambda x: seen.append(x.shape), lambda: torch.zeros(3), warmup=0, repeats=2)
    assert seen == [torch.Size([3])] * 2


@pytest.mark.parametrize("arg", ["repeats", "rotate", "warmup"])
def test_bad_counts_name_the_argument(arg):
    kwargs = {arg: -1 if arg == "warmup" else 0}
    with pytest.raises(ValueError, match=arg):
        time_fn(lambda x: x, _inputs, **kwargs)
    with pytest.raises(ValueError, match=arg):
        benchmark("bad", lambda x: x, _inputs, flops=1, bytes=1, peaks=PEAKS, **kwargs)


def test_measure_peaks_cpu(tmp_path):
    cache = tmp_path / "peaks.json"
    peaks = measure_peaks("cpu", cache_path=cache)
    assert peaks.bandwidth > 0 and peaks.flops > 0
    assert peaks.device and peaks.how
    stored = json.loads(cache.read_text())
    assert stored[peaks.device]["flops"] == peaks.flops
    # a second call reads the file instead of measuring again
    stored[peaks.device]["flops"] = 123.0
    cache.write_text(json.dumps(stored))
    assert measure_peaks("cpu", cache_path=cache).flops == 123.0


def test_benchmark_with_baseline():
    record = benchmark(
        "matmul", lambda x: x @ x, _inputs, flops=2 * 64**3, bytes=2 * 64 * 64 * 4,
        peaks=PEAKS, baseline=lambda x: torch.mm(x, x), warmup=1, repeats=5, size=64,
    )
    assert record["ratio"] == pytest.approx(record["time_s"] / record["baseline_s"])
    floor = max(2 * 64**3 / 1e11, 2 * 64 * 64 * 4 / 1e10)
    assert record["floor_s"] == pytest.approx(floor)
    assert record["floor_ratio"] == pytest.approx(record["time_s"] / floor)
    assert record["bound"] == "compute"
    assert record["size"] == 64 and record["repeats"] == 5
    json.dumps(record)  # plain, serialisable


def test_benchmark_without_baseline():
    record = benchmark("copy", lambda x: x.clone(), _inputs, flops=0, bytes=2 * 64 * 64 * 4,
                       peaks=PEAKS, warmup=0, repeats=3)
    assert record["ratio"] is None and record["baseline_s"] is None
    assert record["bound"] == "memory"


def test_benchmark_parameter_clash():
    with pytest.raises(ValueError, match="time_s"):
        benchmark("x", lambda x: x, _inputs, flops=1, bytes=1, peaks=PEAKS, repeats=1,
                  time_s=3)


def test_results_round_trip(tmp_path):
    records = [
        benchmark("clone", lambda x: x.clone(), _inputs, flops=0, bytes=1, peaks=PEAKS,
                  warmup=0, repeats=2, channels=8),
        {"name": "by hand", "time_s": 0.5},
    ]
    path = write_results(tmp_path / "sub" / "bench.json", records, meta={"note": "test"})
    document = read_results(path)
    assert document["records"] == records
    assert document["meta"] == {"note": "test"}
    assert document["machine"] == machine_info()
    assert isinstance(document["date"], str)


def test_machine_info_has_no_timestamp():
    info = machine_info()
    for key in ("device", "torch", "python", "cuda", "cpu_threads", "commit"):
        assert key in info
    assert "date" not in info and "time" not in info
    assert info["commit"] is None or len(info["commit"]) == 40
