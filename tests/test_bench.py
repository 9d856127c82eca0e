"""The benchmark harness on the CPU: timings are ordered, inputs rotate, files round-trip,
every record names its math mode, and a floor is a floor."""

import json

import pytest
import torch
import torch.nn.functional as F

from effconv_ref import bench
from effconv_ref.bench import (
    Peaks,
    Timing,
    benchmark,
    best_peaks,
    fp32_precision,
    machine_info,
    math_mode_of,
    measure_peaks,
    read_results,
    select_math_mode,
    time_fn,
    write_results,
)
from effconv_ref.cost import pointwise_cost, roofline_floor

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
    assert peaks.math_mode == "fp32" and peaks.threads == torch.get_num_threads()
    assert peaks.bandwidths and all(bw > 0 for _, bw in peaks.bandwidths)
    stored = json.loads(cache.read_text())
    (key,) = stored
    # keyed by everything that changes the peak
    for part in (peaks.device, "fp32", f"{torch.get_num_threads()} threads", torch.__version__):
        assert part in key
    assert stored[key]["flops"] == peaks.flops
    # a second call reads the file instead of measuring again
    stored[key]["flops"] = 123.0
    cache.write_text(json.dumps(stored))
    again = measure_peaks("cpu", cache_path=cache)
    assert again.flops == 123.0 and again.bandwidths == peaks.bandwidths
    # ... but not an entry for another thread count or another mode
    other = key.replace(f"{torch.get_num_threads()} threads", "999 threads")
    cache.write_text(json.dumps({other: stored[key]}))
    assert measure_peaks("cpu", cache_path=cache).flops == peaks.flops


def test_measure_peaks_refuses_a_mode_the_device_lacks():
    with pytest.raises(ValueError, match="math_mode='tf32' needs a GPU"):
        measure_peaks("cpu", math_mode="tf32")
    with pytest.raises(ValueError, match="math_mode must be one of"):
        measure_peaks("cpu", math_mode="int8")


def test_large_matmul_and_1x1_never_beat_their_floor():
    """A floor is a lower bound: a large matmul and a large 1x1 convolution, timed as every
    benchmark is, take at least 0.9x the floor that the default peaks give them. A busy
    machine makes calls slower, the peaks' included: they are measured before and after
    the timings, and the better of the two gives the floor."""
    before = measure_peaks("cpu", fresh=True)
    n, (b, c, size) = 1536, (4, 512, 32)
    cases = {
        f"{n}x{n} matmul": (torch.mm, lambda: (torch.randn(n, n), torch.randn(n, n)),
                            2 * n**3, 3 * 4 * n * n),
        f"1x1 conv {b}x{c}x{size}x{size}": (
            F.conv2d, lambda: (torch.randn(b, c, size, size), torch.randn(c, c, 1, 1)),
            pointwise_cost(c, c, size, size, batch=b).flops,
            pointwise_cost(c, c, size, size, batch=b).bytes),
    }
    records = [benchmark(name, fn, make_inputs, flops=flops, bytes=nbytes, peaks=before,
                         warmup=2, repeats=5, rotate=2)
               for name, (fn, make_inputs, flops, nbytes) in cases.items()]
    peaks = best_peaks(before, measure_peaks("cpu", fresh=True))
    for r in records:
        floor = roofline_floor(r["flops"], r["bytes"], peaks.flops,
                               peaks.bandwidth_for(r["bytes"]))
        assert r["time_s"] >= 0.9 * floor, (
            f"{r['name']} ran in {r['time_s'] * 1e3:.2f} ms, below its floor "
            f"{floor * 1e3:.2f} ms ({r['flops'] / r['time_s'] / 1e9:.0f} Gflop/s "
            f"against a peak of {peaks.flops / 1e9:.0f}): {peaks.how}")


@pytest.mark.parametrize("device_type, dtype, op_kind, settings, mode", [
    # PyTorch's defaults on a recent GPU: cuDNN convolutions on TF32, cuBLAS matmuls in FP32
    ("cuda", torch.float32, "conv", dict(conv_precision="tf32", tf32_hardware=True), "tf32"),
    ("cuda", torch.float32, "matmul", dict(conv_precision="tf32", tf32_hardware=True), "fp32"),
    ("cuda", torch.float32, "any", dict(conv_precision="tf32", tf32_hardware=True), "tf32"),
    ("cuda", torch.float32, "other", dict(conv_precision="tf32", tf32_hardware=True), "fp32"),
    ("cuda", torch.float32, "matmul", dict(matmul_precision="tf32", tf32_hardware=True), "tf32"),
    ("cuda", torch.float32, "conv", dict(conv_precision="ieee", tf32_hardware=True), "fp32"),
    # a T4 (sm_75) has no TF32: the setting changes nothing
    ("cuda", torch.float32, "conv", dict(conv_precision="tf32", tf32_hardware=False), "fp32"),
    ("cuda", torch.bfloat16, "conv", dict(conv_precision="ieee"), "bf16"),
    ("cuda", torch.float16, "matmul", {}, "fp16"),
    ("cuda", torch.float64, "conv", dict(conv_precision="tf32", tf32_hardware=True), "fp64"),
    # a CPU: FP32, unless oneDNN may use bfloat16 and the CPU has it
    ("cpu", torch.float32, "any", {}, "fp32"),
    ("cpu", torch.float32, "conv", dict(conv_precision="tf32", tf32_hardware=True), "fp32"),
    ("cpu", torch.float32, "matmul", dict(matmul_precision="bf16", bf16_hardware=True), "bf16"),
    ("cpu", torch.float32, "matmul", dict(matmul_precision="bf16", bf16_hardware=False), "fp32"),
    ("cpu", torch.float32, "conv", dict(matmul_precision="bf16", bf16_hardware=True), "fp32"),
    ("cpu", torch.float64, "any", {}, "fp64"),
    ("cpu", torch.bfloat16, "any", {}, "bf16"),
])
def test_select_math_mode(device_type, dtype, op_kind, settings, mode):
    assert select_math_mode(device_type, dtype, op_kind, **settings) == mode


def test_select_math_mode_bad_input():
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        select_math_mode("cpu", torch.int32)
    with pytest.raises(ValueError, match="op_kind must be one of"):
        select_math_mode("cpu", torch.float32, "fft")
    with pytest.raises(ValueError, match="device_type must be"):
        select_math_mode("mps", torch.float32)


@pytest.fixture
def torch_precision_settings():
    """Put PyTorch's float32 precision settings back as they were after the test."""
    levels = [torch.backends.cudnn.conv, torch.backends.cuda.matmul, torch.backends.cudnn,
              torch.backends.mkldnn.conv, torch.backends.mkldnn.matmul, torch.backends.mkldnn,
              torch.backends]
    saved = [level.fp32_precision for level in levels]
    yield
    for level, value in reversed(list(zip(levels, saved))):
        level.fp32_precision = value
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False


def test_fp32_precision_reads_torch_settings(torch_precision_settings):
    assert fp32_precision("cuda", "conv") == "tf32"      # PyTorch's defaults
    assert fp32_precision("cuda", "matmul") == "ieee"
    assert fp32_precision("cpu", "matmul") == "ieee"
    torch.backends.cudnn.allow_tf32 = False
    assert fp32_precision("cuda", "conv") == "ieee"
    torch.set_float32_matmul_precision("high")
    assert fp32_precision("cuda", "matmul") == "tf32"
    torch.set_float32_matmul_precision("highest")
    assert fp32_precision("cuda", "matmul") == "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32"   # the newer API
    assert fp32_precision("cuda", "matmul") == "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    assert fp32_precision("cpu", "matmul") == "bf16"
    assert math_mode_of("cpu", torch.float32, "matmul") == ("bf16" if bench._cpu_has_bf16() else "fp32")
    assert math_mode_of("cpu", torch.float32, "conv") == "fp32"
    with pytest.raises(ValueError, match="op_kind must be 'conv' or 'matmul'"):
        fp32_precision("cuda", "any")


@pytest.mark.parametrize("capability, mode", [((9, 0), "tf32"), ((8, 0), "tf32"), ((7, 5), "fp32")])
def test_math_mode_of_a_gpu(capability, mode, monkeypatch, torch_precision_settings):
    """PyTorch's defaults: cuDNN convolutions on TF32 from Ampere (sm_80) on, matmuls in FP32."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = torch.device("cuda", 0)
    assert math_mode_of(gpu, torch.float32, "conv") == math_mode_of(gpu) == mode
    assert math_mode_of(gpu, torch.float32, "matmul") == "fp32"
    assert math_mode_of(gpu, torch.bfloat16, "matmul") == "bf16"
    torch.backends.cudnn.allow_tf32 = False
    assert math_mode_of(gpu) == "fp32"
    torch.set_float32_matmul_precision("high")
    assert math_mode_of(gpu, torch.float32, "matmul") == mode
    torch.set_float32_matmul_precision("highest")


def test_measurement_settings_are_put_back(torch_precision_settings):
    with bench._fp32_precision_as("cuda", "ieee"):
        assert fp32_precision("cuda", "conv") == fp32_precision("cuda", "matmul") == "ieee"
    with bench._fp32_precision_as("cpu", "ieee"):
        assert fp32_precision("cpu", "matmul") == "ieee"
    assert fp32_precision("cuda", "conv") == "tf32" and fp32_precision("cpu", "matmul") == "ieee"
    # and PyTorch's older flags still answer (no "mix of legacy and new APIs" error)
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"


def test_records_name_their_math_mode():
    record = benchmark("mm", torch.mm, lambda: (torch.randn(8, 8), torch.randn(8, 8)),
                       flops=1, bytes=1, peaks=PEAKS, repeats=1)
    assert record["math_mode"] == "fp32"
    fp64 = Peaks(bandwidth=1e10, flops=1e10, device="test CPU", how="made up", math_mode="fp64")
    record = benchmark("mm", torch.mm, lambda: (torch.randn(8, 8, dtype=torch.float64),) * 2,
                       flops=1, bytes=1, peaks=fp64, repeats=1)
    assert record["math_mode"] == "fp64"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert benchmark("mm", torch.mm, lambda: (torch.randn(8, 8),) * 2, flops=1, bytes=1,
                         repeats=1)["math_mode"] == "bf16"


def test_peaks_of_another_mode_are_refused():
    with pytest.raises(ValueError, match="measured in fp32 but 'mm' runs in fp64"):
        benchmark("mm", torch.mm, lambda: (torch.randn(8, 8, dtype=torch.float64),) * 2,
                  flops=1, bytes=1, peaks=PEAKS, repeats=1)
    with pytest.raises(ValueError, match="math_mode must be one of"):
        benchmark("mm", torch.mm, _inputs, flops=1, bytes=1, math_mode="fp8", repeats=1)


def test_best_peaks():
    a = Peaks(bandwidth=10e9, flops=2e11, device="d", how="a", bandwidths=((1, 5.0), (2, 3.0)))
    b = Peaks(bandwidth=12e9, flops=1e11, device="d", how="b", bandwidths=((1, 4.0), (2, 6.0)))
    best = best_peaks(a, b)
    assert (best.bandwidth, best.flops, best.bandwidths) == (12e9, 2e11, ((1, 5.0), (2, 6.0)))
    with pytest.raises(ValueError, match="one device in one math mode"):
        best_peaks(a, Peaks(bandwidth=1, flops=1, device="d", how="", math_mode="fp64"))


def test_bandwidth_for_uses_the_copy_of_the_same_size():
    curve = ((2**20, 200e9), (2**21, 190e9), (2**22, 150e9), (2**23, 60e9), (2**24, 40e9))
    peaks = Peaks(bandwidth=15e9, flops=1e11, device="test", how="made up", bandwidths=curve)
    # in cache: the cache's speed, from the copies of N/2 to N bytes
    assert peaks.bandwidth_for(2**22) == 190e9
    assert peaks.bandwidth_for(2**24 + 1) == 40e9
    assert peaks.bandwidth_for(2**30) == 15e9           # beyond the curve: memory's
    assert peaks.bandwidth_for(2**10) == 200e9          # below it: the best of the curve
    assert PEAKS.bandwidth_for(2**20) == PEAKS.bandwidth  # no curve: memory's
    record = benchmark("copy", lambda x: x.clone(), _inputs, flops=0, bytes=2**22,
                       peaks=peaks, repeats=1)
    assert record["bandwidth"] == 190e9 and record["dram_bandwidth"] == 15e9
    assert record["floor_s"] == pytest.approx(2**22 / 190e9)


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
