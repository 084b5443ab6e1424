"""Time one training step's score, loss and mining kernels at JPQ's shape, on random parameters.

Usage: ``python bench/train_step.py [--batch 32] [--candidates 201] [--dim 384] [--M 16] [--nlist 256]
[--docs 60000] [--mining-batch 128] [--threads 1] [--repeats 50]``.

Prints the median milliseconds of: :meth:`TorchVQ.scores` (per-query lookup tables, what training uses) against the
reconstruction definition ``einsum(q, reconstruct(docs))`` it replaced (forward + backward); JPQ's
:func:`lambda_loss` (pairs formed from the graded rows) against the all-pairs (B, K, K) definition it replaced; and
the exhaustive top-(K-1) of a batch of ``--mining-batch`` queries over every doc (JPQ's ``negatives = "dynamic"``):
:meth:`TorchVQ.scan_topk` (faiss's scan of the fixed codes) against ``all_doc_scores(...).topk`` (every doc
reconstructed) it replaced. Each pair agrees (printed).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmark.vq.params import VQParams  # noqa: E402
from benchmark.vq.torch_vq import TorchVQ  # noqa: E402
from methods.jpq import lambda_loss, lambda_loss_all_pairs  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()                                                            # warmup
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=201, help="K per query (JPQ: top_k 200 + the positive)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--nlist", type=int, default=256, help="0 = flat PQ")
    parser.add_argument("--docs", type=int, default=60000)
    parser.add_argument("--mining-batch", type=int, default=128, help="queries per exhaustive top-k (JPQ's batch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    d, M, B, K = args.dim, args.M, args.batch, args.candidates
    vq = VQParams(pq_codebooks=rng.standard_normal((M, 256, d // M), dtype=np.float32) * 0.1,
                  ivf_centroids=(rng.standard_normal((args.nlist, d), dtype=np.float32) * 0.1
                                 if args.nlist else None),
                  doc_assign=rng.integers(0, max(args.nlist, 1), args.docs) if args.nlist else None,
                  doc_codes=rng.integers(0, 256, (args.docs, M), dtype=np.uint8))
    model = TorchVQ(vq)
    q = torch.from_numpy(rng.standard_normal((B, d), dtype=np.float32))
    idx = torch.from_numpy(rng.integers(0, args.docs, (B, K)))

    def table() -> torch.Tensor:
        return model.scores(q, idx)

    def reconstruction() -> torch.Tensor:
        return torch.einsum("bd,bkd->bk", q, model.reconstruct(idx))

    def step(fn):
        return lambda: fn().sum().backward()

    print(f"B={B} K={K} d={d} M={M} nlist={args.nlist} docs={args.docs}; torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} (forward + backward)")
    with torch.no_grad():
        diff = float((table() - reconstruction()).abs().max())
    t_tab, t_rec = median_ms(step(table), args.repeats), median_ms(step(reconstruction), args.repeats)
    print(f"scores: lookup tables {t_tab:.2f} ms, reconstruction {t_rec:.2f} ms ({t_rec / t_tab:.1f}x); "
          f"max |diff| {diff:.1e}")

    s = torch.randn(B, K, requires_grad=True)
    grade = torch.zeros(B, K)
    grade[:, 0] = 1                                                 # one positive per row, as JPQ's batches
    valid = torch.ones(B, K, dtype=torch.bool)
    new, ref = lambda_loss(s, grade, valid, 0).item(), lambda_loss_all_pairs(s, grade, valid, 0).item()
    t_new = median_ms(lambda: lambda_loss(s, grade, valid, 0).backward(), args.repeats)
    t_ref = median_ms(lambda: lambda_loss_all_pairs(s, grade, valid, 0).backward(), args.repeats)
    print(f"lambda loss: graded rows {t_new:.2f} ms, all pairs {t_ref:.2f} ms ({t_ref / t_new:.1f}x); "
          f"values {new:.6f} vs {ref:.6f}")

    qm = torch.from_numpy(rng.standard_normal((args.mining_batch, d), dtype=np.float32))
    scan, dense = model.scan_topk(qm, K - 1), model.all_doc_scores(qm).topk(K - 1, dim=1).indices
    same = float((scan == dense).float().mean())
    t_scan = median_ms(lambda: model.scan_topk(qm, K - 1), max(3, args.repeats // 5))
    t_dense = median_ms(lambda: model.all_doc_scores(qm).topk(K - 1, dim=1), max(3, args.repeats // 5))
    print(f"exhaustive top-{K - 1} of {args.mining_batch} queries over {args.docs} docs: faiss scan {t_scan:.1f} ms, "
          f"reconstruct every doc {t_dense:.1f} ms ({t_dense / t_scan:.1f}x); same ids {same:.4f}")


if __name__ == "__main__":
    main()
