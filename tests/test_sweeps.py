"""The benchmark sweeps of the papers' figures: records, ratios and the files they write."""

import json
import os

import pytest
import torch

from effconv_ref import sweeps
from effconv_ref.resources import data_dir, read_json

TINY = dict(batch=1, image_size=8, kernel_size=3, channels=4,
            sweeps={"image_size": [8, 16], "kernel_size": [3, 5], "channels": [4]})


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(sweeps.PRESETS, "tiny", TINY)


def test_figure1_records(tiny_preset):
    records = sweeps.lowcost_figure1("tiny", device="cpu", repeats=2)
    assert len(records) == 5 * len(sweeps.FIGURE1_OPERATORS)
    for r in records:
        assert r["speedup"] == pytest.approx(r["baseline_s"] / r["time_s"])
        assert r["speedup"] == pytest.approx(1 / r["ratio"])
        assert r["floor_s"] > 0 and r["flops"] > 0 and r["bytes"] > 0
        swept = r["sweep"]
        assert r[swept] in TINY["sweeps"][swept]
        for other in ("image_size", "kernel_size", "channels"):
            if other != swept:
                assert r[other] == TINY[other]
    fft = [r for r in records if r["name"] == "depth-wise fft" and r["sweep"] == "kernel_size"]
    assert fft[0]["flops"] == fft[1]["flops"], "the FFT path's work must not depend on the kernel size"


def test_steps_records(tiny_preset):
    implicit, explicit = sweeps.lowcost_steps("tiny", device="cpu", repeats=2)
    assert (implicit["name"], explicit["name"]) == ("implicit RD step", "explicit RD step")
    for r in (implicit, explicit):
        assert r["ratio"] == pytest.approx(r["time_s"] / r["baseline_s"])
        assert (r["batch"], r["channels"], r["image_size"]) == (1, 4, 8)
    pixels, c = 8 * 8, 4
    # explicit: the 1x1 reaction M, and K then K^T (two depth-wise 3x3), 2 flops per multiply-add
    assert explicit["flops"] == 2 * (pixels * c * c + 2 * pixels * 9 * c)


def test_cli_writes_json(tiny_preset, tmp_path):
    out = tmp_path / "fig1.json"
    assert sweeps.main(["lowcost-figure1", "--preset", "tiny", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["meta"] == {"sweep": "lowcost-figure1", "preset": "tiny"}
    assert "device" in document["machine"] and len(document["records"]) == 15


def test_cli_errors(capsys):
    with pytest.raises(SystemExit) as exit:
        sweeps.main(["nope"])
    assert exit.value.code == 2
    assert f"unknown sweep 'nope'; choose one of {', '.join(sweeps.SWEEPS)}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweeps.main(["lowcost-figure1", "--preset", "huge"])
    assert "unknown preset 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="preset='huge'"):
        sweeps.lowcost_figure1("huge")


@pytest.fixture
def no_work(monkeypatch):
    """Every sweep replaced by one that records how it was called, so that a test can tell
    whether the command started any work."""
    calls = []

    def fake(preset, **kwargs):
        calls.append((preset, kwargs))
        return [{"name": "fake", "device": "test", "time_s": 1.0}]

    for name in list(sweeps.SWEEPS):
        monkeypatch.setitem(sweeps.SWEEPS, name, fake)
    return calls


def _bad_outs(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    return {
        "an existing folder": (str(tmp_path / "results"), "is a folder"),
        "a path under a regular file": (str(tmp_path / "a-file" / "r.json"), "cannot write"),
        "an unwritable place": ("/proc/effconv/r.json", "cannot write"),
        "an empty path": ("", "--out is empty"),
    }


@pytest.mark.parametrize("case", ["an existing folder", "a path under a regular file",
                                  "an unwritable place", "an empty path"])
def test_cli_checks_out_before_any_work(case, tmp_path, no_work, capsys):
    out, message = _bad_outs(tmp_path)[case]
    with pytest.raises(SystemExit) as exit:
        sweeps.main(["lowcost-steps", "--preset", "cpu", "--out", out])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert no_work == [], "the sweep ran before --out was checked"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_checks_a_read_only_folder(tmp_path, no_work, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(SystemExit):
        sweeps.main(["lowcost-steps", "--preset", "cpu", "--out", str(tmp_path / "ro" / "r.json")])
    assert "cannot write" in capsys.readouterr().err and no_work == []


def test_cli_creates_the_folder_of_out(tmp_path, no_work):
    out = tmp_path / "new" / "deeper" / "r.json"
    assert sweeps.main(["lowcost-steps", "--preset", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["records"] == [{"name": "fake", "device": "test", "time_s": 1.0}]
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # the probe file is gone


def test_cli_refuses_the_gpu_preset_without_a_gpu(tmp_path, no_work, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = str(tmp_path / "r.json")
    for sweep in sweeps.SWEEPS:
        with pytest.raises(SystemExit) as exit:
            sweeps.main([sweep, "--preset", "gpu", "--out", out])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert "this machine has none" in err and "--force" in err
        assert len(err.strip().splitlines()) == 1
    assert no_work == []
    assert sweeps.main(["lowcost-figure1", "--preset", "gpu", "--out", out, "--force"]) == 0
    assert "--force: running the gpu preset on the CPU" in capsys.readouterr().err
    assert [preset for preset, _ in no_work] == ["gpu"]


def test_cli_shows_progress_on_every_sweep(tmp_path, no_work):
    for sweep in sweeps.SWEEPS:
        sweeps.main([sweep, "--preset", "cpu", "--out", str(tmp_path / "r.json")])
        sweeps.main([sweep, "--preset", "cpu", "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert [kwargs["progress"] for _, kwargs in no_work] == [True, False] * len(sweeps.SWEEPS)


def test_steps_sweep_draws_a_progress_bar(tiny_preset, capsys):
    sweeps.lowcost_steps("tiny", device="cpu", repeats=1, progress=True)
    assert "RD steps" in capsys.readouterr().err
    sweeps.lowcost_steps("tiny", device="cpu", repeats=1)
    assert capsys.readouterr().err == ""


def test_default_path_names_the_device():
    assert str(sweeps.default_path("lowcost-figure1", "NVIDIA H100 80GB HBM3")) == \
        "data/bench/lowcost-figure1_nvidia-h100-80gb-hbm3.json"


def test_data_dir(monkeypatch, tmp_path):
    assert (data_dir() / "papers" / "lowcost_table2.json").exists()
    assert read_json("papers/lowcost_table2.json")["entries"]
    (tmp_path / "data" / "papers").mkdir(parents=True)
    monkeypatch.setenv("EFFCONV_REPO", str(tmp_path))
    assert data_dir() == tmp_path / "data"


def test_data_dir_missing(monkeypatch, tmp_path):
    import effconv_ref.resources as resources

    monkeypatch.setattr(resources, "__file__", str(tmp_path / "pkg" / "resources.py"))
    monkeypatch.delenv("EFFCONV_REPO", raising=False)
    with pytest.raises(FileNotFoundError, match="set EFFCONV_REPO"):
        data_dir()


def test_lean_figure1_records(monkeypatch):
    monkeypatch.setitem(sweeps.LEAN_LAYERS, "tiny", dict(batch=1, layers=[(6, 8), (12, 4)]))
    records = sweeps.lean_figure1("tiny", device="cpu", repeats=2)
    assert len(records) == 2 * 5
    for r in records:
        assert r["ratio"] == pytest.approx(r["time_s"] / r["baseline_s"])
        assert r["floor_s"] > 0
    lean = [r for r in records if r["name"] == "lean (LeanConv2d)"]
    assert [r["path"] for r in lean] == ["reference", "reference"]
    assert [r["params"] for r in lean] == [6 * 6 + 4 * 6, 12 * 12 + 4 * 12]
    for c in (6, 12):
        layer = {r["name"]: r for r in records if r["channels"] == c}
        assert layer["1x1 alone"]["vs_1x1"] == 1.0
        m = sweeps.expanded_width(c)
        assert layer["expanded 1x1 (x6) then depth-wise"]["params"] == 6 * m * m + 9 * 6 * m


def test_lean_targets_read_the_records():
    def rec(name, c, t, vs):
        return {"name": name, "channels": c, "time_s": t, "vs_1x1": vs}

    records = [rec("lean (LeanConv2d)", 32, 2.0, 3.0), rec("lean (LeanConv2d)", 64, 1.2, 1.05),
               rec("lean (LeanConv2d)", 128, 1.0, 1.3),
               rec("1x1 + depth-wise + add (PyTorch)", 32, 2.5, 4.0),
               rec("1x1 + depth-wise + add (PyTorch)", 64, 1.5, 1.4),
               rec("1x1 + depth-wise + add (PyTorch)", 128, 0.9, 1.2)]
    met = sweeps.lean_targets(records)
    assert met == {"worst_vs_1x1": 1.3, "beats_unfused": False}   # 32 channels is below the bar
    records[-1]["time_s"] = 1.1
    assert sweeps.lean_targets(records)["beats_unfused"] is True


# ---- every sweep's presets ---------------------------------------------------------------------


def test_every_sweep_has_its_presets():
    assert set(sweeps.SWEEP_PRESETS) == set(sweeps.SWEEPS)
    for sweep, presets in sweeps.SWEEP_PRESETS.items():
        assert {"gpu", "gpu-quick", "cpu"} <= set(presets), sweep


def test_cli_takes_each_sweeps_own_presets(tmp_path, no_work, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = str(tmp_path / "r.json")
    for sweep in sweeps.SWEEPS:
        assert sweeps.main([sweep, "--preset", "cpu", "--out", out]) == 0
        with pytest.raises(SystemExit) as exit:  # a gpu preset is refused on a CPU, quick or not
            sweeps.main([sweep, "--preset", "gpu-quick", "--out", out])
        assert exit.value.code == 2 and "--preset gpu-quick sizes the sweep for a GPU" in capsys.readouterr().err
    assert [preset for preset, _ in no_work] == ["cpu"] * len(sweeps.SWEEPS)
    with pytest.raises(SystemExit):  # another sweep's preset is not this one's
        sweeps.main(["train-steps", "--preset", "tiny", "--out", out])
    assert "unknown preset 'tiny'; choose one of gpu, gpu-quick, cpu" in capsys.readouterr().err


# ---- train-steps -------------------------------------------------------------------------------


def test_train_inputs_and_baselines():
    from effconv_ref.models import list_models

    assert sweeps.train_input("factorized/M") == (224, 1000)
    assert sweeps.train_input("lean/leanresnet-E") == sweeps.train_input("lean/mobilenetv2-E") == (96, 10)
    assert sweeps.train_input("lean/resnet-C") == (32, 100)
    assert sweeps.train_input("lowcost/imprd-A") == sweeps.train_input("resnet/resnet8") == (32, 10)
    assert sweeps.train_baseline("lean/leanresnet-A") == "lean/resnet-A"
    assert sweeps.train_baseline("lean/shiftresnet-E") == "lean/resnet-E"
    assert sweeps.train_baseline("lowcost/imprd-B") == "lowcost/resnet-B"
    assert sweeps.train_baseline("secl/wrn-40-2-secl") == "secl/wrn-40-2"
    assert sweeps.train_baseline("factorized/M") == "factorized/A"
    assert sweeps.train_baseline("lean/shufflenetv2-0.5x") is None
    assert sweeps.train_baseline("resnet/resnet20") is None
    for name in list_models():  # a network and its baseline see the same images
        base = sweeps.train_baseline(name)
        assert base is None or sweeps.train_input(base) == sweeps.train_input(name), name
    # the gpu preset times every network; gpu-quick leaves out those of images above 32x32
    assert sweeps.TRAIN_STEPS["gpu"]["models"] is None
    assert sweeps.TRAIN_STEPS["gpu-quick"]["max_image_size"] == 32


def test_train_steps_records():
    records = sweeps.train_steps("cpu", device="cpu", repeats=2)
    assert [r["name"] for r in records] == list(sweeps.TRAIN_STEPS["cpu"]["models"])
    times = {r["name"]: r["time_s"] for r in records}
    for r in records:
        assert r["status"] == "ok" and r["dtype"] == "float32" and r["math_mode"] == "fp32"
        assert (r["batch"], r["image_size"], r["num_classes"]) == (2, 32, 10)
        assert r["flops"] == 2 * 3 * r["batch"] * r["macs"] > 0
        assert r["bytes"] == 4 * 5 * r["params"] + 4 * 2 * 3 * 32 * 32 + 8 * 2
        assert r["time_s"] >= 0.9 * r["floor_s"] > 0, r  # a floor is a floor, up to noise
    resnet8, mobilenet, resnet = records
    assert resnet8["counted_by"] == "layer_macs" and resnet8["macs"] == 12_501_632
    assert resnet8["baseline"] is None and resnet8["vs_baseline"] is None
    assert mobilenet["baseline"] == "lowcost/resnet-A" and mobilenet["counted_by"] == "count_cost"
    assert mobilenet["vs_baseline"] == pytest.approx(times["lowcost/mobilenet-A"] / times["lowcost/resnet-A"])
    assert mobilenet["ratio"] == mobilenet["vs_baseline"]
    assert resnet["vs_baseline"] == 1.0


def test_train_steps_record_a_network_that_fails(monkeypatch):
    monkeypatch.setitem(sweeps.TRAIN_STEPS, "tiny", dict(batch=1, dtypes=("float32",), max_image_size=None,
                                                         models=("resnet/resnet8", "lowcost/resnet-A")))
    real = sweeps._forward_macs

    def broken(name, *args):
        if name == "lowcost/resnet-A":
            raise RuntimeError("out of memory")
        return real(name, *args)

    monkeypatch.setattr(sweeps, "_forward_macs", broken)
    ok, failed = sweeps.train_steps("tiny", device="cpu", repeats=1)
    assert ok["status"] == "ok" and ok["time_s"] > 0
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: out of memory"
    assert failed["time_s"] is None and failed["vs_baseline"] is None


# ---- triton-ops --------------------------------------------------------------------------------


def test_triton_ops_backends(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert sweeps.triton_ops_backends("cpu") == ("reference",)
    assert sweeps.triton_ops_backends("gpu") == ("existing", "triton", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernels run in Triton's interpreter
    assert sweeps.triton_ops_backends("cpu") == ("reference", "triton")


def test_triton_ops_records():
    records = sweeps.triton_ops("cpu", device="cpu", repeats=2, backends=("reference",))
    preset = sweeps.TRITON_OPS["cpu"]
    names = ["1x1 conv", "3x3 conv", "lean", "depth-wise", "SIC"]
    assert len(records) == len(preset["channels"]) * len(names) * 2
    assert {r["name"] for r in records} == set(names)
    for r in records:
        assert r["status"] == "ok", r
        assert r["backend"] == ("torch" if r["name"].endswith("conv") else "reference")
        assert (r["batch"], r["image_size"], r["dtype"]) == (1, 8, "float32")
        assert r["pass"] in ("forward", "forward+backward")
        assert r["time_s"] >= 0.9 * r["floor_s"] > 0, r
        assert r["copy_fraction"] == pytest.approx(r["bytes"] / r["time_s"] / r["bandwidth"])
        same = {o["name"]: o for o in records if (o["pass"], o["channels"]) == (r["pass"], r["channels"])}
        assert r["ratio_1x1"] == pytest.approx(r["time_s"] / same["1x1 conv"]["time_s"])
        assert r["ratio_3x3"] == pytest.approx(r["time_s"] / same["3x3 conv"]["time_s"])
        assert r["vs_fastest"] is None  # no auto here
    by = {(r["name"], r["pass"], r["channels"]): r for r in records}
    c, n = 8, 8
    assert by["lean", "forward", c]["flops"] == 2 * n * n * (c * c + 4 * c)
    assert by["SIC", "forward", c]["flops"] == 2 * n * n * (9 * c + c * c)
    assert by["SIC", "forward", c]["bytes"] == 4 * (2 * c * n * n + 9 * c + c * c)  # one fused pass
    for name in names:
        forward, both = by[name, "forward", c], by[name, "forward+backward", c]
        assert (both["flops"], both["bytes"]) == (3 * forward["flops"], 2 * forward["bytes"])


def test_triton_ops_record_paths_that_cannot_run(monkeypatch):
    """A backend a layer refuses (the Triton one before it exists, or where Triton cannot run)
    is recorded as unavailable, with the layer's message; any other error as failed."""

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("an illegal memory access")

    monkeypatch.setitem(sweeps.TRITON_OPS, "tiny", dict(batch=1, image_size=4, channels=[4], dtypes=("float32",),
                                                        backends=("reference",)))
    monkeypatch.setattr(sweeps, "_layers", lambda c: {
        "lean": lambda b: sweeps._construct(sweeps.LeanConv2d, c, c, backend=b),
        "SIC": lambda b: Broken() if b == "auto" else torch.nn.Identity()})
    records = sweeps.triton_ops("tiny", device="cpu", repeats=1, backends=("reference", "no-such-path", "auto"))
    status = {(r["name"], r["backend"], r["pass"]): r for r in records}
    refused = status["lean", "no-such-path", "forward"]
    assert refused["status"] == "unavailable" and refused["time_s"] is None
    assert refused["error"].startswith("ValueError: backend='no-such-path' is not a backend")
    broken = status["SIC", "auto", "forward+backward"]
    assert broken["status"] == "failed" and broken["error"] == "RuntimeError: an illegal memory access"
    assert status["lean", "auto", "forward"]["status"] == "ok"
    assert status["lean", "auto", "forward"]["vs_fastest"] == pytest.approx(
        status["lean", "auto", "forward"]["time_s"] / status["lean", "reference", "forward"]["time_s"])
    assert {r["status"] for r in records if r["backend"] in ("reference", "torch")} == {"ok"}


def test_construct_builds_a_one_path_layer_without_backend():
    class OnePath(torch.nn.Module):
        def __init__(self, c):
            super().__init__()

    assert isinstance(sweeps._construct(OnePath, 4, backend="reference"), OnePath)
    with pytest.raises(TypeError):
        sweeps._construct(OnePath, 4, backend="triton")


def test_triton_ops_times_the_triton_kernels(monkeypatch):
    """The sweep on the Triton path, as a GPU runs it; here in Triton's interpreter (conftest.py
    turns it on when there is no GPU), at a size it runs in seconds."""
    from effconv_ref.kernels.triton_build import interpreting

    if not interpreting():
        pytest.skip("the Triton kernels run on the CPU only under TRITON_INTERPRET=1")
    monkeypatch.setitem(sweeps.TRITON_OPS, "tiny", dict(batch=1, image_size=5, channels=[4], dtypes=("float32",),
                                                        backends=("triton",)))
    records = sweeps.triton_ops("tiny", device="cpu", repeats=1)
    triton = [r for r in records if r["backend"] == "triton"]
    assert len(triton) == 3 * 2 and {r["status"] for r in triton} == {"ok"}, triton
    for r in triton:
        assert r["time_s"] >= 0.9 * r["floor_s"] > 0 and r["ratio_1x1"] > 0
