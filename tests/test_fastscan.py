"""Learned 4-bit codes searched by faiss's fast-scan (IndexPQFastScan / IndexIVFPQFastScan): the index stores the
method's own codes (not re-encoded), its scores agree with the torch/numpy scores of those codes up to fast-scan's
lookup-table quantization, and its ranking and nDCG@10 stay those of the plain 4-bit scan.

The tolerance. Fast-scan quantizes each query's lookup table (LUT: q . codeword, one row of 16 per sub-quantizer) to
8 bits with one scale for all rows (a step = the widest row's range / 255, each row shifted by its minimum) and adds
the entries in 16-bit integers; an IVF list's coarse term is quantized to 16 bits on the same scale. Each entry is
rounded by at most half a step, so a returned score is within (sub-quantizers + 1) / 2 steps of the exact score of
the stored codes (measured: at most 0.67 of the sub-quantizers / 2 steps on these fixtures).
"""
from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pytest
import torch

from benchmark.registry import TrainData, make_method
from benchmark.vq import VQParams, build_index, params_from_index, reconstruct, rotate
from benchmark.vq.faiss_init import train_index
from benchmark.vq.params import fastscan_codes, to_fastscan
from benchmark.vq.torch_vq import TorchVQ
from methods.score_aware import decode

FACTORIES = ["PQ8x4", "OPQ16,PQ16x4", "IVF16,PQ8x4", "OPQ16,IVF16,PQ16x4"]
MIN_OVERLAP = 0.95   # mean overlap@10 of the fast-scan top 10 with the plain scan's top 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return unit(rng.standard_normal((4000, 32))), rng.standard_normal((100, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """As tests/test_frontier.py's: unit docs around 40 directions, queries near docs."""
    rng = np.random.default_rng(0)
    centers = unit(rng.standard_normal((40, 32)))
    docs = unit(centers[rng.integers(0, 40, 3000)] + 0.35 * rng.standard_normal((3000, 32)))
    queries = unit(docs[rng.integers(0, 3000, 200)] + 0.15 * rng.standard_normal((200, 32)))
    return docs, queries


_TRAINED: dict[str, VQParams] = {}


def learned_4bit(docs: np.ndarray, factory: str) -> VQParams:
    """faiss-trained parameters, perturbed as a learned method's would be: codebooks moved, and a quarter of the
    codes replaced by random ones (so they are not the nearest codewords and re-encoding would change them)."""
    if factory not in _TRAINED:   # OPQ training takes seconds: once per factory for the module
        _TRAINED[factory] = params_from_index(train_index(docs, factory, seed=1))
    vq = replace(_TRAINED[factory])
    rng = np.random.default_rng(3)
    vq.pq_codebooks = vq.pq_codebooks + 0.01 * rng.standard_normal(vq.pq_codebooks.shape).astype(np.float32)
    swap = rng.random(vq.doc_codes.shape) < 0.25
    vq.doc_codes = np.where(swap, rng.integers(0, 16, vq.doc_codes.shape), vq.doc_codes).astype(np.uint8)
    return vq


def lut_tolerance(vq: VQParams, queries: np.ndarray) -> np.ndarray:
    """Per query: (sub-quantizers + 1) / 2 LUT quantization steps (module docstring), plus float slack."""
    M, _, dsub = vq.pq_codebooks.shape
    lut = np.einsum("qmd,mkd->qmk", rotate(vq, queries).reshape(-1, M, dsub), vq.pq_codebooks)
    step = (lut.max(axis=2) - lut.min(axis=2)).max(axis=1) / 255.0
    return (M + 1) / 2 * step + 1e-5


def overlap10(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a[:, :10], b[:, :10])]))


def search(index: faiss.Index, queries: np.ndarray, nprobe: int = 16, k: int = 10):
    if isinstance(faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index),
                  faiss.IndexIVF):
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index.search(queries, k)


# ------------------------------------------------------------------------------------------- build_index write-back

@pytest.mark.parametrize("factory", FACTORIES)
def test_fastscan_index_stores_the_given_codes(data, factory):
    docs, _ = data
    vq = learned_4bit(docs, factory)
    assert vq.search == "plain" and not vq.fastscan   # read from a plain index: searched as it was
    vq = replace(vq, search="fastscan")
    assert vq.factory == factory + "fs" and vq.bytes_per_vector == vq.M // 2
    index = build_index(vq, docs)
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    assert isinstance(base, faiss.IndexIVFPQFastScan if vq.nlist else faiss.IndexPQFastScan)
    assert index.ntotal == len(docs) and base.bbs == 32
    back = params_from_index(index)                   # unpacked from the SIMD blocks
    assert back.search == "fastscan" and back.factory == vq.factory
    np.testing.assert_array_equal(back.doc_codes, vq.doc_codes)
    if vq.nlist:
        np.testing.assert_array_equal(back.doc_assign, vq.doc_assign)
    np.testing.assert_array_equal(reconstruct(back), reconstruct(vq))   # decode both: the same reconstructions
    if not vq.nlist:                                                    # and faiss's own decoding of its codes
        np.testing.assert_allclose(base.reconstruct_n(0, len(docs)), reconstruct(vq), atol=1e-6)
    # the codes were kept, not re-encoded: re-encoding changes them
    assert (params_from_index(build_index(vq, docs, "reencode")).doc_codes != vq.doc_codes).any()


@pytest.mark.parametrize("factory", FACTORIES)
def test_fastscan_scores_agree_with_torch_up_to_lut_quantization(data, factory):
    """As tests/test_vq.py's 8-bit write-back test, with fast-scan's tolerance: faiss's returned scores == the
    torch scores <q, c + PQ(r)> of the same parameters and codes within (M+1)/2 LUT steps; the ranking is the plain
    scan's for most queries."""
    docs, queries = data
    vq = learned_4bit(docs, factory)
    plain = build_index(vq, docs, "codes")
    fast = build_index(replace(vq, search="fastscan"), docs, "codes")
    scores, ids = search(fast, queries)
    model = TorchVQ(vq)
    torch_scores = model.scores(model.encode_queries(torch.from_numpy(queries)), torch.from_numpy(ids))
    err = np.abs(scores - torch_scores.detach().numpy()).max(axis=1)
    tol = lut_tolerance(vq, queries)
    assert (err <= tol).all(), (err / tol).max()
    assert err.mean() > 1e-4       # the scores are approximate indeed (a plain scan's would be ~1e-7 off)
    p_scores, p_ids = search(plain, queries)
    np.testing.assert_allclose(p_scores, np.take_along_axis(rotate(vq, queries) @ reconstruct(vq).T, p_ids, axis=1),
                               atol=1e-4)
    # a doc swaps only with a near-tie: each fast-scan top-10 score is within the tolerance of the plain one
    assert overlap10(ids, p_ids) >= MIN_OVERLAP
    assert (np.abs(scores - p_scores).max(axis=1) <= 2 * tol).all()


def test_eight_bit_codes_are_searched_plain(data):
    docs, queries = data
    vq = params_from_index(train_index(docs, "PQ8x8", seed=0))
    vq = replace(vq, search="fastscan")       # faiss has no 8-bit fast-scan: the plain index, factory unchanged
    assert not vq.fastscan and vq.factory == "PQ8x8"
    assert type(build_index(vq, docs)) is faiss.IndexPQ
    with pytest.raises(ValueError, match="search must be one of"):
        VQParams(pq_codebooks=vq.pq_codebooks, search="simd")
    with pytest.raises(ValueError, match="fast-scan needs 4-bit codes"):
        to_fastscan(build_index(vq, docs))


@pytest.mark.parametrize("factory", ["OPQ16,PQ16x4", "OPQ16,IVF16,PQ16x4"])
def test_fastscan_index_outlives_its_plain_build_and_serializes(data, factory):
    """The converted index owns what it uses (transform, quantizer, codes): it searches after everything else is
    collected, and a serialized copy (the runner's --save-index) searches the same."""
    import gc
    docs, queries = data
    index = build_index(replace(learned_4bit(docs, factory), search="fastscan"), docs)
    gc.collect()
    before = search(index, queries)
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    del index
    gc.collect()
    after = search(copy, queries)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


# ------------------------------------------------------------------------------------------------------ score-aware

def test_score_aware_fastscan_searches_the_anisotropic_codes(clustered):
    docs, queries = clustered
    train = TrainData(doc_emb=docs, doc_ids=[str(i) for i in range(len(docs))], seed=0)
    vq = make_method("score-aware", {"M": 4, "search": "fastscan"}).fit(train)
    assert (vq.search, vq.factory, vq.bytes_per_vector) == ("fastscan", "PQ8x4fs", 4)
    index = build_index(vq, docs)
    assert isinstance(index, faiss.IndexPQFastScan) and index.sa_code_size() == 4
    # the anisotropic codes are not the nearest-codeword codes, and the index holds them, not a re-encoding
    nearest = params_from_index(build_index(vq, docs, "reencode")).doc_codes
    assert (nearest != vq.doc_codes).any(axis=1).mean() > 0.1
    np.testing.assert_array_equal(faiss.unpack_bitstrings(fastscan_codes(index)[1], 8, 4), vq.doc_codes)
    recon = decode(vq.pq_codebooks, vq.doc_codes.astype(np.int64))
    np.testing.assert_allclose(index.reconstruct_n(0, len(docs)), recon, atol=1e-6)
    scores, ids = index.search(queries, 10)
    exact = np.take_along_axis(queries @ recon.T, ids, axis=1)
    assert (np.abs(scores - exact).max(axis=1) <= lut_tolerance(vq, queries)).all()
    plain = build_index(replace(vq, search="plain"), docs)
    assert type(plain) is faiss.IndexPQ
    assert overlap10(ids, plain.search(queries, 10)[1]) >= MIN_OVERLAP   # measured 0.98


def test_search_param_keeps_the_committed_records_ids():
    """``search`` came after records of the plain scan were committed: 'plain' (what score-aware did before) is its
    legacy value, left out of a record's params and ids; 'fastscan' is recorded."""
    plain, fast = make_method("score-aware", {"search": "plain"}), make_method("score-aware", {"search": "fastscan"})
    assert "search" not in plain.record_params()
    assert fast.record_params()["search"] == "fastscan"
    default = make_method("score-aware")
    assert default.record_params() == ({k: v for k, v in default.config.items() if k != "search"}
                                       if default.config["search"] == "plain" else default.config)


def test_ndcg_on_synthetic_quick_fastscan_within_0002_of_plain():
    """The same score-aware fit (16 B: PQ32x4), searched both ways through the harness: nDCG@10 within 0.002
    (measured 0.4729 plain vs 0.4731 fast-scan; at 8 B 0.2386 vs 0.2387)."""
    from benchmark.data import load_dataset
    from benchmark.harness import ExactReference, SearchSettings, evaluate
    from benchmark.runner import train_data
    ds = load_dataset("synthetic:quick")
    split = ds.split(ds.eval_split)
    exact = ExactReference().top_k(ds, split, 100)
    settings = SearchSettings(latency_queries=5, warmup_queries=1)
    vq = make_method("score-aware", {"M": 16, "search": "fastscan"}).fit(train_data(ds, 0, "cpu", None))
    ev = {mode: evaluate(build_index(replace(vq, search=mode), ds.doc_emb), ds, split, exact, settings)
          for mode in ("plain", "fastscan")}
    assert abs(ev["fastscan"].metrics["nDCG@10"] - ev["plain"].metrics["nDCG@10"]) <= 0.002, ev
    assert abs(ev["fastscan"].fidelity["overlap@10"] - ev["plain"].fidelity["overlap@10"]) <= 0.01
