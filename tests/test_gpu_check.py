"""`make gpu` (effconv_ref.gpu_check): its dry run on the CPU, its refusals, its steps' plumbing
and the summary's verdicts, so that the one command a lent GPU runs cannot rot."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from effconv_ref import gpu_check, sweeps
from effconv_ref.bench import device_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread, here and in subprocesses: the dry run checks the script, not the speed, and
    two threads on a machine whose other core is busy wait a scheduler tick at every parallel op
    (a dry run of 10 s then takes 80)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def test_dry_run_writes_every_sweep_and_the_summary(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the Triton interpreter is slow
    assert gpu_check.main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for sweep in sweeps.SWEEPS:
        document = json.loads((tmp_path / sweeps.default_path(sweep, device_name("cpu")).name).read_text())
        assert document["meta"] == {"sweep": sweep, "preset": "cpu", "repeats": gpu_check.DRY_REPEATS}
        assert document["records"], sweep
        assert all(r.get("status", "ok") == "ok" for r in document["records"]), sweep
    for step in ("1a. compile the CUDA kernels", "1b. CUDA tests on the GPU", "1c. Triton tests on the GPU"):
        assert f"== {step}\n-> skipped: skipped (dry run: no GPU)" in out
    assert "its script ran on the CPU's reference paths" in out  # step 2
    assert "s elapsed of the 480 s budget" in out
    table = out[out.index("== 4. summary"):]
    for layer in ("lean", "depth-wise", "SIC"):
        for pass_ in ("fwd", "fwd+bwd"):
            for c in sweeps.TRITON_OPS["cpu"]["channels"]:
                assert any(line.split()[:4] == [layer, pass_, "float32", str(c)] for line in table.splitlines()), \
                    (layer, pass_, c)
    verdicts = [line for line in table.splitlines() if line.endswith("not measured (CPU dry run)")]
    assert len(verdicts) == len(gpu_check.targets([], [])) >= 10
    assert "train step / its ResNet-A, float32" in table
    assert f"== {4 + len(sweeps.SWEEPS) + 1} steps in" in out and ", 0 failed, 4 skipped" in out


def test_refuses_without_a_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit:
        gpu_check.main(["--out-dir", str(tmp_path)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no CUDA GPU here" in err and "--dry-run" in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_out_dir_it_cannot_write(capsys):
    with pytest.raises(SystemExit) as exit:
        gpu_check.main(["--dry-run", "--out-dir", "/proc/effconv"])
    assert exit.value.code == 2
    assert "--out-dir '/proc/effconv': cannot write" in capsys.readouterr().err


def test_a_failed_step_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    def fake(preset, **kwargs):
        return [{"name": "fake", "status": "ok", "time_s": 1.0}]

    def broken(preset, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    for name in sweeps.SWEEPS:
        monkeypatch.setitem(sweeps.SWEEPS, name, fake)
    monkeypatch.setitem(sweeps.SWEEPS, "triton-ops", broken)
    monkeypatch.setattr(gpu_check, "sanitizer_script_on_cpu", lambda env: ("skipped", "not here"))
    assert gpu_check.main(["--dry-run", "--out-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "-> failed: RuntimeError: CUDA error: an illegal memory access" in out
    assert len(list(tmp_path.glob("*.json"))) == len(sweeps.SWEEPS) - 1  # the others ran
    assert "== 4. summary" in out and "1 failed" in out


def test_run_kills_a_command_that_outlives_its_timeout():
    began = time.monotonic()
    status, seconds, _ = gpu_check._run([sys.executable, "-c", "import time; time.sleep(60)"], 1, capture=True)
    assert status is None and seconds < 30 and time.monotonic() - began < 30
    assert gpu_check._outcome(status, seconds, "sleep")[0] == "failed"
    assert gpu_check._run([sys.executable, "-c", "print('hi')"], 30, capture=True)[::2] == (0, "hi\n")


def test_test_steps_run_the_gpu_tests(monkeypatch):
    commands = []
    monkeypatch.setattr(gpu_check, "_run", lambda command, *a, **k: commands.append(command) or (0, 1.0, ""))
    assert gpu_check.compile_kernels({})[0] == "ok"
    assert {c[-1] for c in commands} == set(gpu_check.cuda_kernel_modules()) >= {
        "effconv_ref.ops.lean_conv", "effconv_ref.ops.spectral", "effconv_ref.ops.spectral_step"}
    commands.clear()
    assert gpu_check.cuda_tests({}) == ("ok", "pytest -m 'cuda or compile': passed")
    assert commands[0][commands[0].index("-m", 2) + 1] == "cuda or compile"
    assert "tests" in commands[0] and "--ignore-glob=*/test_triton*" in commands[0]
    triton_files = gpu_check.triton_test_files()
    commands.clear()
    if triton_files:
        assert gpu_check.triton_tests({})[0] == "ok" and commands[0][-len(triton_files):] == triton_files
    monkeypatch.setattr(gpu_check, "ROOT", ROOT / "effconv_ref")  # a folder without tests/
    assert gpu_check.triton_tests({}) == ("skipped", "missing: no tests/test_triton*.py in this checkout")


def test_sanitizer_step(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "find_sanitizer", lambda: None)
    status, detail = gpu_check.sanitize({})
    assert status == "skipped" and "compute-sanitizer not found" in detail
    fake = tmp_path / "bin" / "compute-sanitizer"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" >> "$0.calls"\necho "========= ERROR SUMMARY: 0 errors"\n'
                    'case "$*" in *racecheck*) exit "${RACE_EXIT:-0}";; esac\n')
    fake.chmod(0o755)
    monkeypatch.undo()
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert gpu_check.find_sanitizer() == str(fake)
    assert gpu_check.sanitize(dict(os.environ)) == ("ok", "memcheck and racecheck: no errors")
    calls = (tmp_path / "bin" / "compute-sanitizer.calls").read_text().splitlines()
    assert sorted(c.split()[1] for c in calls if c.startswith("--tool")) == ["memcheck", "racecheck"]
    assert all("--error-exitcode 1" in c for c in calls if c.startswith("--tool"))
    status, detail = gpu_check.sanitize(dict(os.environ, RACE_EXIT="1"))
    assert status == "failed" and detail.endswith(": racecheck")


def test_sanitizer_is_found_in_the_cuda_toolkit(monkeypatch, tmp_path):
    tool = tmp_path / "cuda" / "bin" / "compute-sanitizer"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert gpu_check.find_sanitizer() == str(tool)


def _layer(name, backend, dtype, c, time_s, pass_="forward", **extra):
    return dict(name=name, backend=backend, dtype=dtype, channels=c, batch=64, time_s=time_s,
                status="ok", **{"pass": pass_}, **extra)


def _gpu_records(lean_fwd=1.1, sic_256=1.2, dw_share=0.8, bf16_gain=1.8, auto=1.0):
    """triton-ops records as a GPU would write them, each layer's time a given multiple of the 1x1's."""
    records = []
    for dtype, scale in (("float32", 1.0), ("bfloat16", 1 / bf16_gain)):
        for c in (64, 128, 256, 512):
            for pass_ in ("forward", "forward+backward"):
                one = scale * c / 64
                ratios = {"lean": lean_fwd + (0 if pass_ == "forward" else 0.15), "depth-wise": 0.3,
                          "SIC": sic_256, "1x1 conv": 1.0, "3x3 conv": 6.0}
                for name, ratio in ratios.items():
                    backends = ["torch"] if name.endswith("conv") else \
                        [{"lean": "cuda"}.get(name, "reference"), "triton", "auto"]
                    for backend in backends:
                        t = one * ratio * {"auto": auto, "triton": 1.0, "torch": 1.0}.get(backend, 1.05)
                        records.append(_layer(name, backend, dtype, c, t, pass_, copy_fraction=dw_share))
    sweeps._layer_ratios(records)
    return records


def _train(vs):
    return [dict(name=n, dtype="float32", status="ok", baseline=b, vs_baseline=v)
            for n, b, v in [("lean/leanresnet-A", "lean/resnet-A", vs), ("lowcost/imprd-A", "lowcost/resnet-A", 0.7),
                            ("lowcost/resnet-A", "lowcost/resnet-A", 1.0), ("lean/leanresnet-C", "lean/resnet-C", 3.0)]]


def test_summary_flags_each_target():
    rows = {what: (value, passed) for what, value, _, passed in
            gpu_check.targets(_gpu_records(), _train(0.9))}
    assert all(passed for _, passed in rows.values()), rows
    assert rows["train step / its ResNet-A, float32"][0].startswith("0.90x (lean/leanresnet-A, 2 nets)")
    assert rows["lean fwd / 1x1, >= 64 ch"][0].startswith("1.10x")
    rows = {what: passed for what, _, _, passed in
            gpu_check.targets(_gpu_records(lean_fwd=1.2, sic_256=1.6, dw_share=0.5, bf16_gain=1.3, auto=1.5),
                              _train(1.1))}
    assert not any(rows.values()), rows
    text = gpu_check.summary(_gpu_records(), _train(0.9))
    assert "FAIL" not in text and text.count("PASS") == len(rows)
    lines = text.splitlines()
    assert any(line.split()[:5] == ["lean", "fwd", "float32", "64", "64"] and line.endswith("yes") for line in lines)
    assert len({len(line) for line in lines if "|" in line}) == 1  # fixed width
    assert "no records at batch 64" in gpu_check.summary([], [])


def test_make_gpu_runs_the_check_and_passes_quick():
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")

    def dry(*args):
        done = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(ROOT), "gpu", "VENV=/no/venv", *args],
                              capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                   if not k.startswith("MAKE")})
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[-1]

    assert dry() == "/no/venv/bin/python -m effconv_ref.gpu_check"
    assert dry("QUICK=1") == "/no/venv/bin/python -m effconv_ref.gpu_check --quick"
