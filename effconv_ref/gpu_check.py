"""``make gpu``: everything that needs a GPU, in one command that fits 8 minutes on an H100/H200.

``python -m effconv_ref.gpu_check`` runs, in order, each step timed (its wall time and the time
elapsed so far printed after it), a failed step recorded without stopping the later ones:

1. **tests on the GPU**: (a) every CUDA kernel compiled, the kernels in parallel (each module of
   ``effconv_ref/ops`` that calls ``load_cuda``); (b) the CUDA tests, ``pytest -m "cuda or
   compile" tests`` (the Triton tests left out); (c) the Triton tests, ``pytest
   tests/test_triton*.py`` (reported missing where there are none);
2. **compute-sanitizer** ``--tool memcheck`` and ``--tool racecheck`` (the two at once) on a small
   script that runs the CUDA kernels once each, forward and backward (:data:`SANITIZER_SNIPPET`);
   skipped, not failed, where ``compute-sanitizer`` is not found (``PATH``, ``$CUDA_HOME/bin``,
   ``/usr/local/cuda/bin``);
3. **every sweep** of :data:`effconv_ref.sweeps.SWEEPS` at its ``gpu`` preset with
   :data:`REPEATS` timed calls per case, ``triton-ops`` and ``train-steps`` first, each written to
   ``data/bench/<sweep>_<device>.json``. A sweep that starts behind the time budget runs at its
   ``gpu-quick`` preset with half the repeats, and says so;
4. **one summary table** read back from the files just written (:func:`summary`): each layer
   against cuDNN's 1x1 and 3x3 convolutions, the depth-wise layer's share of the copy bandwidth,
   whether ``backend="auto"`` took the fastest path, and the targets with PASS/FAIL.

The exit status is 1 when a step failed, 0 otherwise (a missed target is reported, not an
error). ``--quick`` (``make gpu QUICK=1``) halves the budget: the ``gpu-quick`` presets and
half the repeats. ``--dry-run`` rehearses the same script on the CPU: the tests and the
sanitizer are skipped (the sanitizer's script still runs, on the reference paths), every sweep
runs at its ``cpu`` preset with 2 repeats into ``--out-dir`` (a new temporary folder by
default), and the summary is built from those records, its targets "not measured". Without
``--dry-run`` a machine with no GPU is refused (exit status 2).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

PROG = "python -m effconv_ref.gpu_check"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: tests/ lives here
BUDGET_S = 480  # the whole run, compiles included; --quick halves it
REPEATS = 20  # timed calls per case in the sweeps (the harness's default on CUDA is 100)
DRY_REPEATS = 2
SWEEP_RESERVE_S = 25  # a sweep that starts with less than this per sweep left runs quick
TIMEOUT_S = {"compile": 300, "cuda-tests": 300, "triton-tests": 300, "sanitizer": 240}
FIRST_SWEEPS = ("triton-ops", "train-steps")  # the summary reads these two
TARGET_BATCH = 64  # the layer targets hold at this batch
AUTO_SLACK = 1.10  # backend="auto" took the fastest path when within 10% of it (timing noise)

# Run under compute-sanitizer: each CUDA kernel once, forward and backward, at small odd sizes.
# The dry run runs it on the CPU's reference paths, so that it cannot drift from the API.
SANITIZER_SNIPPET = """\
import torch
from effconv_ref.lean import LeanConv2d
from effconv_ref.ops.spectral import spectral_multiply
from effconv_ref.ops.spectral_step import depthwise_symbol, spectral_step

device, backend = {device!r}, {backend!r}
torch.manual_seed(0)
# kernels/lean.cu: square and non-square layers, stride 1 and 2, float32 and bfloat16
for dtype in (torch.float32, torch.bfloat16):
    for c_in, c_out, stride in ((8, 8, 1), (6, 10, 2), (10, 6, 1)):
        layer = LeanConv2d(c_in, c_out, stride=stride, bias=True, backend=backend).to(device, dtype)
        x = torch.randn(2, c_in, 13, 11, device=device, dtype=dtype, requires_grad=True)
        layer(x).float().square().sum().backward()
# kernels/spectral_step.cu (each mode) and kernels/spectral.cu
x_hat = torch.fft.rfft2(torch.randn(2, 3, 12, 10, device=device)).requires_grad_()
k_hat = depthwise_symbol(torch.randn(3, 1, 3, 3, device=device), 12, 10).requires_grad_()
h = torch.tensor(0.5, device=device, requires_grad=True)
for mode in ("multiply", "adjoint", "solve"):
    y = spectral_step(x_hat, k_hat, mode, h=h if mode == "solve" else None, backend=backend)
    torch.view_as_real(y).square().sum().backward()
torch.view_as_real(spectral_multiply(x_hat, k_hat, backend=backend)).square().sum().backward()
if device == "cuda":
    torch.cuda.synchronize()
print("sanitizer script: every kernel ran forward and backward")
"""


@dataclass
class Step:
    """One step's outcome: ``status`` is ``"ok"``, ``"failed"`` or ``"skipped"``."""

    name: str
    status: str
    seconds: float
    detail: str = ""


def _say(text: str = "") -> None:
    print(text, flush=True)


def _refuse(message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------- subprocesses


def _run(command: list[str], timeout: float, env: dict | None = None, capture: bool = False):
    """Run ``command`` in the checkout, in a process group of its own that is killed whole
    after ``timeout`` seconds. Returns ``(exit status or None when timed out, seconds, output)``;
    the output is captured only with ``capture`` (else it goes to this process's)."""
    start = time.monotonic()
    pipe = subprocess.PIPE if capture else None
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, text=True,
                               stdout=pipe, stderr=subprocess.STDOUT if capture else None)
    try:
        output, _ = process.communicate(timeout=timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status = None
    except BaseException:  # Ctrl-C: the group does not see the terminal's signal
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return status, time.monotonic() - start, output or ""


def _child_env(dry: bool) -> dict:
    """This environment, without ``TRITON_INTERPRET`` on a GPU (the kernels are compiled there)."""
    env = dict(os.environ)
    if not dry:
        env.pop("TRITON_INTERPRET", None)
    return env


def _outcome(status, seconds: float, what: str) -> tuple[str, str]:
    if status is None:
        return "failed", f"{what}: timed out after {seconds:.0f} s"
    if status != 0:
        return "failed", f"{what}: exit status {status}"
    return "ok", f"{what}: passed"


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ----------------------------------------------------------------------------- step 1: tests


def cuda_kernel_modules() -> list[str]:
    """The modules of ``effconv_ref/ops`` that compile a CUDA kernel (their ``_kernel()`` does)."""
    ops = Path(__file__).resolve().parent / "ops"
    return sorted(f"effconv_ref.ops.{path.stem}" for path in ops.glob("*.py")
                  if "load_cuda(" in path.read_text())


def compile_kernels(env: dict) -> tuple[str, str]:
    """Compile every CUDA kernel, one process per kernel, all at once."""
    modules = cuda_kernel_modules()
    code = "import importlib, sys; importlib.import_module(sys.argv[1])._kernel()"
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(modules) or 1) as pool:
        runs = {m: pool.submit(_run, [sys.executable, "-c", code, m], TIMEOUT_S["compile"], env, True)
                for m in modules}
    failed = []
    for module, run in runs.items():
        status, seconds, output = run.result()
        state, _ = _outcome(status, seconds, module)
        _say(f"  {module:34s} {state:7s} {seconds:6.1f} s")
        if state != "ok":
            failed.append(module)
            _say(_tail(output))
    if failed:
        return "failed", f"{len(failed)} of {len(modules)} kernels did not compile: {', '.join(failed)}"
    return "ok", f"{len(modules)} kernels compiled"


def cuda_tests(env: dict) -> tuple[str, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or compile",
               "tests", "--ignore-glob=*/test_triton*"]
    _say("  " + " ".join(command[1:]))
    status, seconds, _ = _run(command, TIMEOUT_S["cuda-tests"], env)
    return _outcome(status, seconds, "pytest -m 'cuda or compile'")


def triton_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_triton*.py"))


def triton_tests(env: dict) -> tuple[str, str]:
    files = triton_test_files()
    if not files:
        return "skipped", "missing: no tests/test_triton*.py in this checkout"
    # -n 8: the fuzz compiles each kernel in each config, dtype and shape; eight processes
    # (pytest-xdist) compile them side by side on the GPU machine's cores
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "8", *files]
    _say("  " + " ".join(command[1:]))
    status, seconds, _ = _run(command, TIMEOUT_S["triton-tests"], env)
    return _outcome(status, seconds, "pytest " + " ".join(files))


# ----------------------------------------------------------------------------- step 2: sanitizer


def find_sanitizer() -> str | None:
    """``compute-sanitizer`` on ``PATH``, else in the CUDA toolkit (``$CUDA_HOME``,
    ``$CUDA_PATH``, ``/usr/local/cuda``); ``None`` when there is none."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        for place in ("bin", "compute-sanitizer"):
            candidate = Path(home or "/nonexistent") / place / "compute-sanitizer"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def sanitize(env: dict) -> tuple[str, str]:
    """memcheck and racecheck, at once, on :data:`SANITIZER_SNIPPET`."""
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return "skipped", ("compute-sanitizer not found (looked in PATH, $CUDA_HOME/bin, "
                           "$CUDA_PATH/bin, /usr/local/cuda/bin)")
    code = SANITIZER_SNIPPET.format(device="cuda", backend="cuda")
    # without PyTorch's caching allocator every tensor is its own allocation, so that a read
    # past the end of one is caught instead of landing in its neighbour
    env = dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    options = ["--error-exitcode", "1"]
    if "--report-api-errors" in _run([sanitizer, "--help"], 60, env, True)[2]:
        # errors that CUDA API calls return to PyTorch, which handles them (a peer-access probe,
        # ...), are not the kernels' errors
        options += ["--report-api-errors", "no"]
    tools = ("memcheck", "racecheck")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(tools)) as pool:
        runs = {tool: pool.submit(_run, [sanitizer, "--tool", tool, *options, sys.executable, "-c", code],
                                  TIMEOUT_S["sanitizer"], env, True)
                for tool in tools}
    failed = []
    for tool, run in runs.items():
        status, seconds, output = run.result()
        state, _ = _outcome(status, seconds, tool)
        summary = [line.strip() for line in output.splitlines() if "SUMMARY" in line]
        _say(f"  {tool:10s} {state:7s} {seconds:6.1f} s  {'; '.join(summary)}")
        if state != "ok":
            failed.append(tool)
            _say(_tail(output, 40))
    if failed:
        return "failed", f"compute-sanitizer found errors or did not finish: {', '.join(failed)}"
    return "ok", "memcheck and racecheck: no errors"


def sanitizer_script_on_cpu(env: dict) -> tuple[str, str]:
    """The dry run's step 2: the sanitizer's script on the CPU's reference paths, unsanitized."""
    code = SANITIZER_SNIPPET.format(device="cpu", backend="reference")
    status, seconds, output = _run([sys.executable, "-c", code], TIMEOUT_S["sanitizer"], env, True)
    if status != 0:
        _say(_tail(output))
        return "failed", f"the sanitizer's script failed on the CPU (exit status {status})"
    return "skipped", ("skipped (dry run: no GPU); compute-sanitizer not run, its script ran on "
                       f"the CPU's reference paths in {seconds:.1f} s")


# ----------------------------------------------------------------------------- step 3: sweeps


def sweep_order() -> list[str]:
    from effconv_ref.sweeps import SWEEPS

    return [s for s in FIRST_SWEEPS if s in SWEEPS] + [s for s in SWEEPS if s not in FIRST_SWEEPS]


def run_sweep(sweep: str, preset: str, repeats: int, device: torch.device, path: Path,
              written: dict) -> tuple[str, str]:
    """Run one sweep and write its records to ``path`` (noted in ``written``)."""
    from effconv_ref.bench import write_results
    from effconv_ref.sweeps import SWEEPS

    records = SWEEPS[sweep](preset, device=device, progress=False, repeats=repeats)
    written[sweep] = write_results(path, records, meta={"sweep": sweep, "preset": preset, "repeats": repeats})
    failed = [r for r in records if r.get("status") == "failed"]
    unavailable = [r for r in records if r.get("status") == "unavailable"]
    for r in failed[:10]:
        _say(f"  failed: {_case_name(r)}: {r.get('error')}")
    reasons = sorted({f"{r.get('name')} backend={r.get('backend')!r}: {r.get('error')}" for r in unavailable})
    for reason in reasons[:10]:
        _say(f"  unavailable: {reason}")
    detail = (f"{len(records)} records ({len(failed)} failed, {len(unavailable)} unavailable), "
              f"preset {preset}, {repeats} repeats -> {path}")
    return ("failed" if failed else "ok"), detail


def _case_name(r: dict) -> str:
    keys = ("name", "backend", "pass", "dtype", "channels")
    return " ".join(str(r[k]) for k in keys if r.get(k) is not None)


# ----------------------------------------------------------------------------- step 4: summary


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "--" if value is None else f"{value:{spec}}{suffix}"


def _user_path(group: dict):
    """The record of the path a user gets: ``auto`` where it ran, else the layer's own path."""
    if "auto" in group:
        return group["auto"]
    return next((r for b, r in group.items() if b not in ("triton", "auto")), None)


def _layer_groups(records: list[dict]) -> dict:
    """``(name, pass, dtype, channels, batch) -> {column: record}`` for the three layers, the
    column ``existing``, ``triton`` or ``auto``; records that did not run are kept too."""
    groups: dict = {}
    for r in records:
        if r.get("name") in ("lean", "depth-wise", "SIC"):
            column = r["backend"] if r["backend"] in ("triton", "auto") else "existing"
            groups.setdefault((r["name"], r["pass"], r["dtype"], r["channels"], r["batch"]), {})[column] = r
    return groups


def _ok(group: dict) -> dict:
    return {k: r for k, r in group.items() if r.get("status") == "ok"}


def _layer_table(records: list[dict]) -> list[str]:
    head = (f"{'layer':10s} {'pass':9s} {'dtype':8s} {'C':>4s} {'batch':>5s} | "
            f"{'x 1x1: existing':>15s} {'triton':>7s} {'auto':>7s} | {'x 3x3':>6s} "
            f"{'copy bw':>7s} {'auto fastest':>12s}")
    lines = [head, "-" * len(head)]
    for (name, pass_, dtype, c, batch), group in sorted(_layer_groups(records).items(),
                                                        key=lambda item: (item[0][0], item[0][1], item[0][2],
                                                                          item[0][3])):
        def cell(column, width):
            r = group.get(column)
            if r is None:
                return f"{'':>{width}s}"
            if r.get("status") != "ok":
                return f"{'n/a' if r.get('status') == 'unavailable' else 'FAIL':>{width}s}"
            return f"{_fmt(r.get('ratio_1x1')):>{width}s}"

        ok = _ok(group)
        shown = _user_path(ok) or (min(ok.values(), key=lambda r: r["time_s"]) if ok else None)
        bandwidth = _fmt(100 * shown["copy_fraction"], ".0f", "%") if shown and name == "depth-wise" else "--"
        auto = ok.get("auto")
        fastest = "--" if auto is None or auto.get("vs_fastest") is None else \
            ("yes" if auto["vs_fastest"] <= AUTO_SLACK else f"no ({auto['vs_fastest']:.2f}x)")
        lines.append(f"{name:10s} {'fwd' if pass_ == 'forward' else 'fwd+bwd':9s} {dtype[:8]:8s} {c:>4d} "
                     f"{batch:>5d} | {cell('existing', 15)} {cell('triton', 7)} {cell('auto', 7)} | "
                     f"{_fmt(shown and shown.get('ratio_3x3')):>6s} {bandwidth:>7s} {fastest:>12s}")
    if len(lines) == 2:
        lines.append("(no records of the triton-ops sweep)")
    return lines


def _worst(values, larger_is_worse: bool):
    """The worst ``(value, where)`` of ``values``, ``None`` when empty."""
    values = [v for v in values if v[0] is not None]
    if not values:
        return None
    return (max if larger_is_worse else min)(values, key=lambda v: v[0])


def targets(triton_records: list[dict], train_records: list[dict]) -> list[tuple]:
    """The targets, read off the records: ``(what, worst measured, target, passed)`` rows,
    ``passed`` ``None`` where nothing was measured. Layers: the path a user gets
    (``backend="auto"``, else the layer's own), at batch :data:`TARGET_BATCH`."""
    groups = {k: _user_path(_ok(g)) for k, g in _layer_groups(triton_records).items()
              if k[4] == TARGET_BATCH}
    groups = {k: r for k, r in groups.items() if r is not None}

    def pick(name, pass_="forward", channels=lambda c: True):
        return [(r, k) for k, r in groups.items() if k[0] == name and k[1] == pass_ and channels(k[3])]

    rows = []

    def add(what, found, bound, larger_is_worse, unit="x"):
        worst = _worst(found, larger_is_worse)
        target = f"{'<=' if larger_is_worse else '>='} {bound:g}{unit}"
        if worst is None:
            rows.append((what, f"no records at batch {TARGET_BATCH}", target, None))
            return
        value, where = worst
        shown = f"{100 * value:.0f}%" if unit == "%" else f"{value:.2f}x"
        limit = bound / 100 if unit == "%" else bound
        rows.append((what, f"{shown} ({where})", target,
                     value <= limit if larger_is_worse else value >= limit))

    def where(k):
        return f"{k[2]}, {k[3]} ch"

    add("lean fwd / 1x1, >= 64 ch", [(r.get("ratio_1x1"), where(k))
                                         for r, k in pick("lean", channels=lambda c: c >= 64)], 1.15, True)
    add("lean fwd+bwd / 1x1 fwd+bwd, >= 64 ch",
        [(r.get("ratio_1x1"), where(k)) for r, k in pick("lean", "forward+backward", lambda c: c >= 64)],
        1.3, True)
    add("depth-wise fwd, share of copy bandwidth", [(r.get("copy_fraction"), where(k))
                                                 for r, k in pick("depth-wise")], 70, False, "%")
    add("SIC fwd / 1x1, 256 ch", [(r.get("ratio_1x1"), where(k))
                                      for r, k in pick("SIC", channels=lambda c: c == 256)], 1.25, True)
    add("3x3 / SIC fwd, 256 ch", [(1 / r["ratio_3x3"] if r.get("ratio_3x3") else None, where(k))
                                      for r, k in pick("SIC", channels=lambda c: c == 256)], 4, False)
    for name in ("lean", "depth-wise", "SIC"):
        fp32 = {k[3]: r["time_s"] for r, k in pick(name, channels=lambda c: c >= 128) if k[2] == "float32"}
        bf16 = {k[3]: r["time_s"] for r, k in pick(name, channels=lambda c: c >= 128) if k[2] == "bfloat16"}
        add(f"{name} fwd, fp32 / bf16, >= 128 ch",
            [(fp32[c] / bf16[c], f"{c} ch") for c in sorted(set(fp32) & set(bf16))], 1.6, False)
    compared = [r for r in train_records if r.get("status") == "ok" and r.get("vs_baseline") is not None
                and r["name"] != r.get("baseline")
                and (r["name"] == "lean/leanresnet-A"
                     or (r["name"].startswith("lowcost/") and r["name"].endswith("-A")))]
    for dtype in sorted({r["dtype"] for r in compared}) or ["float32"]:
        found = [(r["vs_baseline"], r["name"]) for r in compared if r["dtype"] == dtype]
        worst = _worst(found, True)
        what = f"train step / its ResNet-A, {dtype}"
        if worst is None:
            rows.append((what, "no records", "<= 1x", None))
        else:
            rows.append((what, f"{worst[0]:.2f}x ({worst[1]}, {len(found)} nets)", "<= 1x", worst[0] <= 1.0))
    autos = [(r["vs_fastest"], k) for k, g in _layer_groups(triton_records).items()
             for r in [_ok(g).get("auto")] if r is not None and r.get("vs_fastest") is not None]
    if not autos:
        rows.append(("backend='auto' took the fastest path", "no records", "all cases", None))
    else:
        slow = [(v, k) for v, k in autos if v > AUTO_SLACK]
        worst = max(autos, key=lambda a: a[0])
        k = worst[1]
        rows.append(("backend='auto' took the fastest path",
                     f"{len(autos) - len(slow)} of {len(autos)} (worst {worst[0]:.2f}x: {k[0]} {k[1]} {k[2]} {k[3]} ch)",
                     f"all, {AUTO_SLACK:g}x", not slow))
    return rows


def summary(triton_records: list[dict], train_records: list[dict], measured: bool = True) -> str:
    """The table that ends ``make gpu``: the layers (each path's time over cuDNN's 1x1 of the same
    layer, the 3x3's and the copy bandwidth share of the path a user gets, whether ``auto`` took
    the fastest path), then the targets with PASS/FAIL (``measured=False``: "not measured (CPU dry
    run)")."""
    lines = ["layers: time over cuDNN's 1x1 convolution of the same layer, pass and dtype (x 1x1);",
             "x 3x3 and copy bw of backend='auto' (else the layer's own path); n/a: path unavailable",
             ""]
    lines += _layer_table(triton_records)
    lines.append("")
    head = f"{'target':40s} {'measured (worst case)':50s} {'bound':>14s}  result"
    lines += [head, "-" * len(head)]
    for what, value, bound, passed in targets(triton_records, train_records):
        result = ("not measured (CPU dry run)" if not measured
                  else "no data" if passed is None else "PASS" if passed else "FAIL")
        lines.append(f"{what[:40]:40s} {value[:50]:50s} {bound:>14s}  {result}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def _records(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return json.loads(path.read_text())["records"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="half the budget: the sweeps' gpu-quick presets and half the repeats")
    parser.add_argument("--dry-run", action="store_true",
                        help="rehearse on the CPU at the sweeps' cpu presets, without tests or sanitizer")
    parser.add_argument("--out-dir", default=None,
                        help="where the JSON goes (default: data/bench; a new temporary folder with --dry-run)")
    args = parser.parse_args(argv)

    from effconv_ref.bench import device_name
    from effconv_ref.sweeps import check_out, default_path

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        _refuse("no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine, "
                "or add --dry-run to rehearse it on the CPU at tiny sizes")
    device = torch.device("cpu" if dry else "cuda")
    device_label = device_name(device)
    if args.out_dir is not None:
        out_dir = Path(args.out_dir)
    elif dry:
        out_dir = Path(tempfile.mkdtemp(prefix="effconv-gpu-check-"))
    else:
        out_dir = default_path("x", device_label).parent
    try:
        check_out(out_dir / default_path(sweep_order()[0], device_label).name)
    except ValueError as error:  # "--out '<file>': cannot write in '<folder>' (<why>)"
        _refuse(f"--out-dir {str(out_dir)!r}: {str(error).split(': ', 1)[-1]}")

    budget = BUDGET_S / (2 if args.quick else 1)
    repeats = DRY_REPEATS if dry else REPEATS // (2 if args.quick else 1)
    preset = "cpu" if dry else ("gpu-quick" if args.quick else "gpu")
    start = time.monotonic()
    env = _child_env(dry)
    steps: list[Step] = []

    def step(name: str, action) -> Step:
        _say(f"\n== {name}")
        began = time.monotonic()
        try:
            status, detail = action()
        except Exception:  # noqa: BLE001 (a step's failure must not stop the others)
            status, detail = "failed", traceback.format_exc().rstrip().splitlines()[-1]
            _say(traceback.format_exc().rstrip())
        done = Step(name, status, time.monotonic() - began, detail)
        steps.append(done)
        _say(f"-> {status}: {detail} ({done.seconds:.1f} s; {time.monotonic() - start:.1f} s elapsed"
             f" of the {budget:.0f} s budget)")
        return done

    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    try:
        import triton

        versions += f", Triton {triton.__version__}"
    except ImportError:
        versions += ", no Triton"
    _say(f"{PROG}: {device_label}; {versions}; "
         f"{'a dry run on the CPU' if dry else 'a quick run' if args.quick else 'a full run'}, "
         f"sweeps at preset {preset} with {repeats} repeats, JSON into {out_dir}")

    no_gpu = ("skipped", "skipped (dry run: no GPU)")
    step("1a. compile the CUDA kernels", (lambda: no_gpu) if dry else (lambda: compile_kernels(env)))
    step("1b. CUDA tests on the GPU", (lambda: no_gpu) if dry else (lambda: cuda_tests(env)))
    step("1c. Triton tests on the GPU", (lambda: no_gpu) if dry else (lambda: triton_tests(env)))
    step("2. compute-sanitizer memcheck and racecheck",
         (lambda: sanitizer_script_on_cpu(env)) if dry else (lambda: sanitize(env)))

    written: dict[str, Path] = {}
    order = sweep_order()
    for i, sweep in enumerate(order):
        path = out_dir / default_path(sweep, device_label).name
        sweep_preset, sweep_repeats = preset, repeats
        left = budget - (time.monotonic() - start)
        if not dry and left < SWEEP_RESERVE_S * (len(order) - i) / (2 if args.quick else 1):
            sweep_preset, sweep_repeats = "gpu-quick", max(3, repeats // 2)
            _say(f"\n(behind the budget, {left:.0f} s left: {sweep} runs at gpu-quick with "
                 f"{sweep_repeats} repeats)")
        step(f"3{chr(ord('a') + i)}. sweep {sweep}",
             lambda: run_sweep(sweep, sweep_preset, sweep_repeats, device, path, written))

    def table() -> tuple[str, str]:
        text = summary(_records(written.get("triton-ops")), _records(written.get("train-steps")),
                       measured=not dry)
        _say("")
        _say(text)
        return "ok", "summary of " + ", ".join(s for s in FIRST_SWEEPS if s in written)

    step("4. summary", table)

    failed = [s for s in steps if s.status == "failed"]
    _say(f"\n== {len(steps)} steps in {time.monotonic() - start:.0f} s (budget {budget:.0f} s): "
         f"{sum(s.status == 'ok' for s in steps)} ok, {len(failed)} failed, "
         f"{sum(s.status == 'skipped' for s in steps)} skipped")
    for s in steps:
        _say(f"  {s.status:7s} {s.seconds:6.1f} s  {s.name}: {s.detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
