"""What each Triton kernel compiles to on each GPU, found without a GPU.

``python -m effconv_ref.kernels.triton_targets`` compiles every kernel, in every config and
dtype, for sm_75 (T4), sm_80 (A100) and sm_90 (H100), and prints one row each: the matrix
instructions in its PTX (``wgmma``: Hopper's warp-group MMA; ``mma``: ``mma.sync``, Ampere's
tensor-core MMA; ``fma``: none, the product runs as FP32 FMAs on the CUDA cores) and the shared
memory it needs beside the GPU's limit. ``--json`` prints the rows as JSON (the tests read it).

It must run without ``TRITON_INTERPRET`` (see :func:`~effconv_ref.kernels.triton_build.compile_for`);
run under the interpreter, it refuses.
"""

from __future__ import annotations

import argparse
import json
import sys

import triton.language as tl

from effconv_ref.kernels.triton_build import SHARED_MEMORY_LIMIT, compile_for, interpreting, load_triton

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
CAPABILITIES = (75, 80, 90)

# each kernel with the meta-parameters of a typical layer (3x3, stride 1); a kernel with a tl.dot
# also takes PRECISION, as at run time: "tf32" for float32 (PyTorch's default), "ieee" otherwise
KERNELS = {
    "lean": ("lean_triton", "lean_kernel", dict(STRIDE=1, HAS_BIAS=False)),
    "depthwise": ("depthwise_triton", "depthwise_kernel", dict(K=3, MULT=1, STRIDE=1, PERIODIC=False)),
    "intra_pointwise": ("sic_triton", "intra_pointwise_kernel",
                        dict(K=3, BASES=1, RESIDUAL=True, HAS_BIAS=False)),
}


def signature(kernel, dtype: str, constexprs: dict, config) -> dict:
    """Triton types of the runtime arguments: every ``*_ptr`` a pointer to ``dtype``, the rest ``i32``."""
    meta = set(constexprs) | set(config.meta)
    return {name: (f"*{DTYPES[dtype]}" if name.endswith("_ptr") else "i32")
            for name in kernel.arg_names if name not in meta}


def matrix_instruction(ptx: str) -> str:
    """``"wgmma"``, ``"mma"`` or ``"fma"``: how the kernel's products run."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma"
    return "fma"


def compile_rows(kernels=tuple(KERNELS), dtypes=tuple(DTYPES), capabilities=CAPABILITIES,
                 configs=None) -> list[dict]:
    """Compile each kernel in every config (or the indices in ``configs``), dtype and
    capability; one row each."""
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET is set: Triton cannot compile for a GPU in an interpreting "
                           "process; run `env -u TRITON_INTERPRET python -m effconv_ref.kernels.triton_targets`")
    rows = []
    for name in kernels:
        module_name, kernel_name, constexprs = KERNELS[name]
        module = load_triton(module_name)
        kernel = getattr(module, kernel_name)
        for config_index, config in enumerate(module.CONFIGS):
            if configs is not None and config_index not in configs:
                continue
            for dtype in dtypes:
                meta = dict(constexprs, ACC=tl.float32)
                if "PRECISION" in kernel.arg_names:
                    meta["PRECISION"] = "tf32" if dtype == "float32" else "ieee"
                for cc in capabilities:
                    compiled = compile_for(kernel, signature(kernel, dtype, meta, config), meta, config, cc)
                    rows.append(dict(kernel=name, config=config_index, config_text=str(config), dtype=dtype,
                                     sm=cc, instruction=matrix_instruction(compiled.asm["ptx"]),
                                     shared=compiled.metadata.shared, shared_limit=SHARED_MEMORY_LIMIT[cc]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effconv_ref.kernels.triton_targets", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--kernel", action="append", choices=list(KERNELS), help="only these kernels")
    parser.add_argument("--config", action="append", type=int, help="only these configs (indices)")
    parser.add_argument("--dtype", action="append", choices=list(DTYPES), help="only these dtypes")
    parser.add_argument("--sm", action="append", type=int, choices=CAPABILITIES, help="only these GPUs")
    args = parser.parse_args(argv)
    rows = compile_rows(tuple(args.kernel or KERNELS), tuple(args.dtype or DTYPES),
                        tuple(args.sm or CAPABILITIES), args.config)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'kernel':<16}{'config':>7}{'dtype':>10}{'sm':>5}{'math':>7}{'shared':>9}{'limit':>9}")
    for r in rows:
        print(f"{r['kernel']:<16}{r['config']:>7}{r['dtype']:>10}{r['sm']:>5}{r['instruction']:>7}"
              f"{r['shared']:>9}{r['shared_limit']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
