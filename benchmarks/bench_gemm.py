"""The linear layers' matrix products: torch's BLAS (MKL) against oneDNN with pre-packed weights,
fp32 (lm.gemm=onednn) and bfloat16 (lm.dtype=bf16).

    python benchmarks/bench_gemm.py [--repeats 10] [--json PATH]

The shapes are SmolLM2-135M's linear layers (hidden 576, MLP 1,536, 3 key/value heads of 64)
at three row counts: a prefill batch (16 prompts of 300 tokens = 4,800 rows), a decoding step
of a 16-row batch, and a decoding step of one row; the output layer at the decoding steps. Each product runs with the engine's thread
count, both ways in the same run, on the same random fp32 inputs: GFLOPS, the ratio, the
largest relative difference, and whether a row's result is the same when computed alone as in
the whole batch (what lets batched and one-at-a-time runs agree to the bit). The bfloat16 side
is timed as the engine runs it: the input rounded to bfloat16, the output back to fp32; its
ratio is to oneDNN's fp32, its difference to BLAS's (a CPU without oneDNN's bfloat16 kernels
has no bf16 column). Then fused products: q, k and v as one product against three, gate and up
as one against two, whether each layer's columns are the bits of its own product, and which
the engine fuses (`linear.FUSED`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ads_cli.engine.linear import bf16_supported

SHAPES = [("q_proj, o_proj", 576, 576), ("k_proj, v_proj", 576, 192), ("gate_proj, up_proj", 576, 1536), ("down_proj", 1536, 576)]
ROWS = [("prefill, 16 x 300 tokens", 4800), ("decoding step, 16 rows", 16), ("decoding step, 1 row", 1)]
# the output layer (the tied embeddings, 49,152 tokens) runs on the rows whose logits are kept: a
# decoding step's, not a prefill's
OUTPUT = ("lm_head", 576, 49152)


def seconds(f, repeats: int) -> float:
    f()
    started = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - started) / repeats


def fused_products(repeats: int) -> list[dict]:
    """Layers that read the same input (q, k and v; gate and up) as one oneDNN product against
    one product each, at each row count: time, whether each layer's columns are the bits of its
    own product, and whether the engine fuses them (`linear.FUSED`)."""
    from ads_cli.engine.linear import FUSED, _packed_product_class

    product = _packed_product_class()
    shapes = {name: (k, n) for names, k, n in SHAPES for name in names.split(", ")}  # each layer's (inputs, outputs)
    print(f"\n{'rows':28}{'layers':34}{'one each (us)':>14}{'as one (us)':>12}{'ratio':>8}{'same bits':>10}{'engine fuses':>14}")
    figures = []
    for rows_name, m in ROWS:
        for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            linears = [torch.nn.Linear(*shapes[name], bias=False) for name in group]
            k = linears[0].in_features  # the group's layers read the same input
            fused, alone = product(linears, torch.float32), [product([linear], torch.float32) for linear in linears]
            x = torch.randn(m, k)
            t_alone = seconds(lambda: [p(x, 0) for p in alone], repeats)
            t_fused = seconds(lambda: [fused(x, part) for part in range(len(group))], repeats)
            x = torch.randn(m, k)  # a new input: the product is computed again, not reused
            same = all(fused(x, part).equal(p(x, 0)) for part, p in enumerate(alone))
            figures.append({"rows": m, "fused": ", ".join(group), "separate_us": t_alone * 1e6, "fused_us": t_fused * 1e6,
                            "fused_vs_separate": t_alone / t_fused, "same_bits": same, "engine_fuses": group in FUSED})
            print(f"{rows_name:28}{', '.join(group):34}{t_alone * 1e6:14.0f}{t_fused * 1e6:12.0f}{t_alone / t_fused:7.2f}x{str(same):>10}"
                  f"{'yes' if group in FUSED else 'no':>14}")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("error: --repeats must be >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    with_bf16 = bf16_supported()
    print(f"{torch.get_num_threads()} threads; torch {torch.__version__}"
          + ("" if with_bf16 else "; no bf16 column: oneDNN has no bfloat16 kernels on this CPU"))
    print(f"{'rows':28}{'layer':20}{'blas GFLOPS':>12}{'onednn GFLOPS':>15}{'ratio':>8}{'max rel diff':>14}{'rows alone = batch':>22}"
          + (f"{'bf16 GFLOPS':>13}{'vs onednn':>10}{'rel diff':>10}" if with_bf16 else ""))
    figures = []
    for rows_name, m in ROWS:
        for layer, k, n in SHAPES + ([OUTPUT] if m <= 16 else []):
            x, w = torch.randn(m, k), torch.randn(n, k)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            blas = lambda x=x: torch.nn.functional.linear(x, w)  # noqa: E731
            onednn = lambda x=x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # noqa: E731
            t_blas, t_onednn = seconds(blas, args.repeats), seconds(onednn, args.repeats)
            flops = 2 * m * k * n
            y_blas, y_onednn = blas(), onednn()
            rel = float((y_blas - y_onednn).abs().max() / y_blas.abs().max())
            alone = {name: all(torch.equal(f(x[i:i + 1]), y[i:i + 1]) for i in range(min(m, 4)))
                     for name, f, y in (("blas", blas, y_blas), ("onednn", onednn, y_onednn))}
            row = {"rows": m, "in": k, "out": n, "blas_gflops": flops / t_blas / 1e9, "onednn_gflops": flops / t_onednn / 1e9,
                   "onednn_vs_blas": t_blas / t_onednn, "max_rel_diff": rel, "row_alone_equal": alone}
            line = (f"{rows_name:28}{layer:20}{row['blas_gflops']:12.0f}{row['onednn_gflops']:15.0f}{row['onednn_vs_blas']:7.2f}x"
                    f"{rel:14.1e}{'blas ' + ('yes' if alone['blas'] else 'no') + ', onednn ' + ('yes' if alone['onednn'] else 'no'):>22}")
            if with_bf16:
                packed_bf16 = torch.ops.mkldnn._reorder_linear_weight(w.bfloat16(), None)
                bf16 = lambda x=x: torch.ops.mkldnn._linear_pointwise(x.bfloat16(), packed_bf16, None, "none", [], "").float()  # noqa: E731
                t_bf16 = seconds(bf16, args.repeats)
                row |= {"bf16_gflops": flops / t_bf16 / 1e9, "bf16_vs_onednn": t_onednn / t_bf16,
                        "bf16_max_rel_diff": float((y_blas - bf16()).abs().max() / y_blas.abs().max())}
                line += f"{row['bf16_gflops']:13.0f}{row['bf16_vs_onednn']:9.2f}x{row['bf16_max_rel_diff']:10.1e}"
            figures.append(row)
            print(line)
    figures += fused_products(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures -> {args.json}")


if __name__ == "__main__":
    main()
