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
