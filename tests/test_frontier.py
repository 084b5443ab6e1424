"""The compression frontier: score-aware (anisotropic) PQ and faiss's native quantizers as registered methods."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from benchmark.registry import DataFacts, MethodError, TrainData, available, make_method
from benchmark.vq import BuiltIndex, build_index
from methods.score_aware import (anisotropic_loss, assign, decode, eta_exact, eta_limit, kmeans_pq, point_etas,
                                 update_codebooks)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """Unit-norm docs around 40 directions (32-d), and queries that are noisy copies of docs: each query's top
    neighbours score far above the rest, so the inner products of high-scoring pairs are what ranking needs."""
    rng = np.random.default_rng(0)
    centers = unit(rng.standard_normal((40, 32)))
    docs = unit(centers[rng.integers(0, 40, 3000)] + 0.35 * rng.standard_normal((3000, 32)))
    queries = unit(docs[rng.integers(0, 3000, 200)] + 0.15 * rng.standard_normal((200, 32)))
    return docs, queries


def train_of(docs: np.ndarray, seed: int = 0) -> TrainData:
    return TrainData(doc_emb=docs, doc_ids=[str(i) for i in range(len(docs))], seed=seed)


# --------------------------------------------------------------------------------------------- the anisotropic loss

def test_loss_with_eta_one_equals_reconstruction_loss():
    rng = np.random.default_rng(1)
    x, x_rec = rng.standard_normal((50, 12)), rng.standard_normal((50, 12))
    plain = np.sum((x - x_rec) ** 2, axis=1)
    np.testing.assert_allclose(anisotropic_loss(x, x_rec, 1.0), plain, rtol=1e-12)
    # eta weights exactly the parallel part: r = a * x gives eta * a^2 ||x||^2; r orthogonal to x is not weighted
    orth = x_rec - (np.sum(x_rec * x, axis=1, keepdims=True) / np.sum(x * x, axis=1, keepdims=True)) * x
    np.testing.assert_allclose(anisotropic_loss(x, x - 0.5 * x, 7.0), 7.0 * 0.25 * np.sum(x * x, axis=1))
    np.testing.assert_allclose(anisotropic_loss(x, x - orth, 7.0), np.sum(orth * orth, axis=1), rtol=1e-9)


def test_eta_one_training_steps_are_plain_pq(clustered):
    docs, _ = clustered
    cb = kmeans_pq(docs, 8, 4, seed=0, niter=3)
    ones = np.ones(len(docs))
    codes, _ = assign(docs, cb, ones)
    pq = faiss.ProductQuantizer(32, 8, 4)
    faiss.copy_array_to_vector(cb.ravel(), pq.centroids)
    np.testing.assert_array_equal(codes, faiss.unpack_bitstrings(pq.compute_codes(docs), 8, 4))  # nearest codeword
    new = update_codebooks(docs, codes, cb, ones)
    for m in (0, 5):  # the least-squares update at eta = 1 is the Lloyd mean of each codeword's points
        for k in (0, 7):
            members = docs[codes[:, m] == k][:, m * 4:(m + 1) * 4]
            np.testing.assert_allclose(new[m, k], members.astype(np.float64).mean(axis=0), rtol=1e-9, atol=1e-12)


def test_eta_from_threshold():
    # Theorem 3.4 (ScaNN's formula): (d-1) t^2 / (1 - t^2); at d=384, T=0.2: 383 * 0.04 / 0.96
    assert eta_limit(0.2, 384) == pytest.approx(15.958333, abs=1e-5)
    # Theorem 3.2's integrals at the same point, and their approach to the limit as d grows
    assert eta_exact(0.2, 384) == pytest.approx(17.9406, abs=1e-3)
    ratios = [eta_exact(0.2, d) / eta_limit(0.2, d) for d in (384, 20000)]
    assert ratios[0] == pytest.approx(1.1242, abs=1e-3) and 1.0 < ratios[1] < 1.02
    etas = point_etas(np.array([1.0, 0.5, 0.1]), 0.2, 384, "limit")  # ||x|| <= T: plain reconstruction
    np.testing.assert_allclose(etas, [15.958333, 383 * 0.16 / 0.84, 1.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- the method

def test_training_loss_never_increases(clustered):
    docs, _ = clustered
    vq = make_method("score-aware", {"M": 4, "iterations": 4, "codebook_update": True}).fit(train_of(docs))
    hist = vq.info["loss_history"]
    assert len(hist) == 8
    assert all(b <= a + 1e-12 for a, b in zip(hist, hist[1:]))
    assert hist[-1] < 0.9 * hist[0]


def ip_error_top(docs, queries, recon, k=10):
    """Mean |q.x - q.x~| over each query's exact top-k docs."""
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :k]
    exact = np.take_along_axis(queries @ docs.T, top, axis=1)
    approx = np.take_along_axis(queries @ recon.T, top, axis=1)
    return float(np.abs(exact - approx).mean())


# measured |q.x - q.x~| over the top 10, score-aware vs plain PQ: 0.168 vs 0.178 (4 bits), 0.115 vs 0.133 (8 bits),
# 0.099 vs 0.178 (4 bits, codebooks trained on the anisotropic loss: they also undo k-means' shrink along x)
@pytest.mark.parametrize("nbits, codebook_update, ratio", [(4, False, 0.97), (8, False, 0.92), (4, True, 0.65)])
def test_beats_plain_pq_on_inner_products_of_top_neighbours(clustered, nbits, codebook_update, ratio):
    docs, queries = clustered
    M = 4  # 4 bytes: PQ8x4 or PQ4x8 over 32-d
    pq = faiss.index_factory(32, f"PQ{M * 8 // nbits}x{nbits}", faiss.METRIC_INNER_PRODUCT)
    pq.pq.cp.seed = 0
    pq.train(docs)
    pq.add(docs)
    plain = ip_error_top(docs, queries, pq.reconstruct_n(0, len(docs)))
    vq = make_method("score-aware", {"M": M, "nbits": nbits, "codebook_update": codebook_update}).fit(train_of(docs))
    index = build_index(vq, docs)
    ours = ip_error_top(docs, queries, index.reconstruct_n(0, len(docs)))
    assert ours < ratio * plain, (ours, plain)
    # and it ranks better: overlap of the top 10 with the exact top 10
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    overlap = [np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.search(queries, 10)[1], exact)])
               for idx in (pq, index)]
    assert overlap[1] > overlap[0], overlap  # measured: 0.382 vs 0.352 at 4 bits


def test_four_bit_codes_are_what_faiss_scores(clustered):
    docs, queries = clustered
    vq = make_method("score-aware", {"M": 4, "iterations": 1, "search": "plain"}).fit(train_of(docs))
    assert (vq.factory, vq.bytes_per_vector, vq.writeback) == ("PQ8x4", 4, "codes")
    index = build_index(vq, docs)
    assert index.sa_code_size() == 4
    scores, ids = index.search(queries, 5)
    recon = decode(vq.pq_codebooks, vq.doc_codes.astype(np.int64))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ recon.T, ids, axis=1), atol=1e-5)
    # the default scan, fast-scan, holds the same codes (its scores are within the 8-bit LUT error: test_fastscan)
    fast = make_method("score-aware", {"M": 4, "iterations": 1}).fit(train_of(docs))
    assert fast.factory == "PQ8x4fs" and np.array_equal(fast.doc_codes, vq.doc_codes)


def test_same_seed_same_numbers(clustered):
    docs, _ = clustered
    a, b = (make_method("score-aware", {"M": 4, "iterations": 2, "codebook_update": True}).fit(train_of(docs, seed=3))
            for _ in range(2))
    np.testing.assert_array_equal(a.doc_codes, b.doc_codes)
    np.testing.assert_array_equal(a.pq_codebooks, b.pq_codebooks)


def test_bad_params_fail_with_one_clear_error(clustered):
    with pytest.raises(MethodError, match=r"nbits=5: expected one of 4, 8"):
        make_method("score-aware", {"nbits": 5})
    with pytest.raises(MethodError, match=r"eta=0.5: expected float >= 1"):
        make_method("score-aware", {"eta": 0.5})
    with pytest.raises(MethodError, match=r"score-aware: M=3 makes 6 sub-quantizers of 4 bits, which must be a "
                                          r"positive divisor of the embedding dim 32"):
        make_method("score-aware", {"M": 3}).fit(train_of(clustered[0]))
    # the runner's pre-training check sees the same layout (4-bit: 16 codewords need >= 16 training points)
    assert make_method("score-aware", {"M": 3}).check_data(DataFacts(32, 10)) == [
        "M=3 makes 6 sub-quantizers of 4 bits, which must be a positive divisor of the embedding dim 32",
        "4-bit PQ trains 16 codewords per sub-quantizer by k-means and needs >= 16 training points; this corpus "
        "gives 10 (10 docs)"]
    assert make_method("faiss-pq-fastscan", {"M": 4}).check_data(DataFacts(32, 100)) == []          # 8 sub-quantizers | 32
    assert make_method("faiss-pq-fastscan", {"M": 3}).check_data(DataFacts(32, 100)) == [
        "M=3 makes 6 sub-quantizers of 4 bits, which must be a positive divisor of the embedding dim 32"]
    assert make_method("score-aware", {"M": 4, "nbits": 8}).check_data(DataFacts(32, 300)) == []


# ------------------------------------------------------------------------------------------------ faiss references

@pytest.mark.parametrize("name, params, bytes_per_vector", [
    ("faiss-pq-fastscan", {"M": 4}, 4),
    ("faiss-sq", {"bits": 8}, 32),
    ("faiss-sq", {"bits": 4}, 16),
    ("faiss-rabitq", {}, 4 + 8),             # 32 sign bits + faiss's two float factors per vector
    ("faiss-rabitq", {"nb_bits": 4}, 16 + 20),
    ("faiss-ivfrabitq", {"nlist": 16}, 1 + 4 + 8),  # + the list number (1 byte for 16 lists)
    ("binary-sign", {}, 4),
])
def test_native_quantizers_hold_every_doc_and_report_their_bytes(clustered, name, params, bytes_per_vector):
    docs, queries = clustered
    built = make_method(name, params).fit(train_of(docs))
    assert isinstance(built, BuiltIndex)
    assert built.index.ntotal == len(docs)
    assert built.info["bytes_per_vector"] == built.index.sa_code_size() == bytes_per_vector
    scores, ids = built.index.search(queries, 10)
    assert ids.min() >= 0 and (np.diff(scores, axis=1) <= 1e-6).all()  # inner product: best first


def test_native_quantizers_rank_in_budget_order(clustered):
    """More bits per dimension, closer to the exact top 10 (numbers on this fixture)."""
    docs, queries = clustered
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]

    def overlap(name, params):
        idx = make_method(name, params).fit(train_of(docs)).index
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.search(queries, 10)[1], exact)]))

    sq8, sq4, sign, rq4 = (overlap("faiss-sq", {"bits": 8}), overlap("faiss-sq", {"bits": 4}),
                           overlap("binary-sign", {}), overlap("faiss-rabitq", {"nb_bits": 4}))
    assert sq8 > 0.95 and sq8 > sq4 > sign, (sq8, sq4, sign)
    assert rq4 > sign + 0.2, (rq4, sign)


def test_binary_sign_scores_the_float_query_against_sign_bits(clustered):
    docs, queries = clustered
    index = make_method("binary-sign").fit(train_of(docs)).index
    scores, ids = index.search(queries, 5)
    exact = queries @ np.sign(docs).T / np.sqrt(32)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, axis=1), atol=1e-5)
    np.testing.assert_array_equal(ids[:, 0], exact.argmax(axis=1))


def test_rabitq_is_seeded():
    rng = np.random.default_rng(2)
    docs = unit(rng.standard_normal((500, 32)))
    a, b, c = (make_method("faiss-rabitq").fit(train_of(docs, seed=s)).index for s in (1, 1, 2))
    q = docs[:20]
    assert (a.search(q, 10)[1] == b.search(q, 10)[1]).all()
    assert not np.array_equal(a.search(q, 10)[0], c.search(q, 10)[0])


def test_listed_with_descriptions():
    methods = available()
    for name, family in [("score-aware", "score-aware"), ("faiss-pq-fastscan", "reconstruction"),
                         ("faiss-sq", "reconstruction"), ("faiss-rabitq", "reconstruction"),
                         ("faiss-ivfrabitq", "reconstruction"),
                         ("binary-sign", "reconstruction")]:
        assert methods[name].family == family
        assert len(methods[name].description()) > 30
