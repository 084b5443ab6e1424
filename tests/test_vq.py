"""VQParams <-> faiss round trip, write-back modes, and faiss scores == torch reconstruction scores."""
import faiss
import numpy as np
import pytest
import torch

from benchmark.vq.faiss_init import train_index
from benchmark.vq import VQParams, build_index, params_from_index, reconstruct, rotate
from benchmark.vq.torch_vq import TorchVQ

FACTORIES = ["PQ8x8", "OPQ8,PQ8x8", "IVF16,PQ8x8", "OPQ8,IVF16,PQ8x8"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((4000, 32)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.standard_normal((100, 32)).astype(np.float32)
    return docs, queries


def _search(index, queries, k=10):
    if "IVF" in index.__class__.__name__ or isinstance(index, faiss.IndexPreTransform):
        try:
            faiss.extract_index_ivf(index).nprobe = 16
        except RuntimeError:
            pass
    return index.search(queries, k)


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("writeback", ["codes", "preassigned", "reencode"])
def test_round_trip_reproduces_faiss(data, factory, writeback):
    docs, queries = data
    original = train_index(docs, factory, seed=0)
    vq = params_from_index(original)
    assert vq.factory == factory and vq.bytes_per_vector == 8
    rebuilt = build_index(vq, docs, writeback)
    assert rebuilt.ntotal == len(docs)
    d0, i0 = _search(original, queries)
    d1, i1 = _search(rebuilt, queries)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, atol=1e-6)


@pytest.mark.parametrize("factory", FACTORIES)
def test_faiss_scores_equal_torch_reconstruction(data, factory):
    """Top-10 of 100 queries: faiss scores == <q, c + PQ(r)> computed in torch from the same parameters."""
    docs, queries = data
    vq = params_from_index(train_index(docs, factory, seed=1))
    rng = np.random.default_rng(3)
    vq.pq_codebooks = vq.pq_codebooks + 0.01 * rng.standard_normal(vq.pq_codebooks.shape).astype(np.float32)
    if vq.nlist:
        vq.ivf_centroids = vq.ivf_centroids + 0.01 * rng.standard_normal(vq.ivf_centroids.shape).astype(np.float32)
    index = build_index(vq, docs, "codes")
    scores, ids = _search(index, queries)
    model = TorchVQ(vq)
    q_rot = model.encode_queries(torch.from_numpy(queries))
    torch_scores = model.scores(q_rot, torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_allclose(scores, torch_scores, atol=1e-4)
    exhaustive = model.all_doc_scores(q_rot).numpy()
    if not vq.nlist:  # flat PQ: faiss's top-10 is the torch top-10
        np.testing.assert_allclose(np.sort(exhaustive, axis=1)[:, ::-1][:, :10], scores, atol=1e-4)
    np.testing.assert_allclose(rotate(vq, queries) @ reconstruct(vq).T, exhaustive, atol=1e-4)


@pytest.mark.parametrize("factory", ["OPQ8,PQ8x8", "OPQ8,IVF16,PQ8x8", "IVF16,PQ16x4"])
def test_scan_topk_is_the_exhaustive_torch_topk(data, factory):
    """The faiss scan behind exhaustive top-k (JPQ's dynamic negatives) ranks every doc by the current parameters as
    all_doc_scores does, after the codebooks, centroids and query adapter have moved (twice: the copy-in repeats)."""
    docs, queries = data
    model = TorchVQ(params_from_index(train_index(docs, factory, seed=1)), query_adapter=True)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        q_rot = model.encode_queries(torch.from_numpy(queries))
        top = model.scan_topk(q_rot, 20)
        assert torch.equal(model.topk(q_rot, 20), top)          # what topk(pool=None) uses on CPU
        want = model.all_doc_scores(q_rot)
        ref = want.topk(20, dim=1)
        np.testing.assert_allclose(want.gather(1, top).numpy(), ref.values.numpy(), atol=1e-5)   # same scores
        assert (top == ref.indices).float().mean() > 0.99                                      # ties aside


def test_codes_writeback_keeps_codes_reencode_changes_them(data):
    docs, _ = data
    vq = params_from_index(train_index(docs, "IVF16,PQ8x8", seed=0))
    vq.pq_codebooks = vq.pq_codebooks * 1.5  # codes are no longer the nearest codewords
    kept = params_from_index(build_index(vq, docs, "codes"))
    np.testing.assert_array_equal(kept.doc_codes, vq.doc_codes)
    np.testing.assert_array_equal(kept.doc_assign, vq.doc_assign)
    fresh = params_from_index(build_index(vq, docs, "reencode"))
    assert (fresh.doc_codes != vq.doc_codes).any()


def test_missing_codes_is_a_clear_error(data):
    docs, _ = data
    vq = params_from_index(train_index(docs, "IVF16,PQ8x8", seed=0), with_doc_codes=False)
    with pytest.raises(ValueError, match="needs doc_codes"):
        build_index(vq, docs, "codes")
    with pytest.raises(ValueError, match="writeback must be one of"):
        VQParams(pq_codebooks=vq.pq_codebooks, writeback="bogus")


def test_two_level_lists_train_the_ivf_init_and_keep_old_ids(tmp_path):
    """coarse = "two-level" (faiss.contrib.clustering.two_level_clustering, for thousands of lists) gives a full IVF
    init whose lists fit the docs about as well as faiss's k-means, cached apart; at "kmeans" (its legacy value)
    records and fit ids are what they were before the param existed."""
    from benchmark.registry import make_method
    from benchmark.vq.faiss_init import trained_params
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((60, 16))
    x = (centers[rng.integers(0, 60, 8000)] + 0.5 * rng.standard_normal((8000, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fits = {c: trained_params(x, "OPQ4,IVF128,PQ4x8", seed=0, cache_dir=str(tmp_path), opq_niter=3, coarse=c)
            for c in ("kmeans", "two-level")}
    assert len(list(tmp_path.glob("faiss-init-*.faiss"))) == 2
    fit = {}
    for coarse, vq in fits.items():
        assert vq.info["init_coarse"] == coarse and vq.ivf_centroids.shape == (128, 16)
        assert (vq.doc_assign >= 0).all() and vq.doc_codes.shape == (8000, 4)
        fit[coarse] = float(np.mean(np.sum(rotate(vq, x) * vq.ivf_centroids[vq.doc_assign], axis=1)))
    assert not np.allclose(fits["kmeans"].ivf_centroids, fits["two-level"].ivf_centroids)
    assert abs(fit["two-level"] - fit["kmeans"]) < 0.01 * fit["kmeans"]
    assert "coarse" not in make_method("faiss-ivfopq").record_params()
    assert "opq_train_points" not in make_method("faiss-ivfopq").record_params()     # legacy: faiss's 65,536
    assert make_method("jpq", {"opq_train_points": 16384}).record_params()["opq_train_points"] == 16384
    small = trained_params(x, "OPQ4,IVF128,PQ4x8", seed=0, cache_dir=str(tmp_path), opq_niter=3,
                           opq_train_points=1000)
    assert len(list(tmp_path.glob("faiss-init-*.faiss"))) == 3       # its own cache entry, another rotation
    assert not np.allclose(small.rotation, fits["kmeans"].rotation)
    assert make_method("distill-vq", {"coarse": "two-level"}).record_params()["coarse"] == "two-level"


def test_flat_index_assignment_encodes_like_faiss_and_is_cached_apart(tmp_path):
    """pq_assign = "flat-index" spells faiss's add out (OPQ, coarse assignment, residual) and encodes through an
    IndexFlatL2 per sub-quantizer: on 16-d sub-vectors (faiss's BLAS distance-table path) the same lists and the same
    codes up to float near-ties as faiss's own add of the same trained index; its init is its own cache entry and at
    "tables" (its legacy value) records and fit ids are what they were before the param existed."""
    from benchmark.registry import make_method
    from benchmark.vq.faiss_init import add_docs, trained_params
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((40, 128))
    x = (centers[rng.integers(0, 40, 6000)] + 0.7 * rng.standard_normal((6000, 128))).astype(np.float32)
    for factory in ("OPQ8,IVF32,PQ8x8", "PQ8x8"):
        trained = train_index(x, factory, seed=0, opq_niter=2, add=False)
        ours = faiss.clone_index(trained)
        trained.add(x)
        add_docs(ours, x, "flat-index")
        a, b = params_from_index(trained), params_from_index(ours)
        assert ours.ntotal == trained.ntotal == 6000
        assert a.doc_assign is None or np.array_equal(a.doc_assign, b.doc_assign)
        assert np.mean(a.doc_codes == b.doc_codes) > 0.9999 and a.doc_codes.shape == (6000, 8)
    tables = trained_params(x, "OPQ8,PQ8x8", seed=0, cache_dir=str(tmp_path), opq_niter=2)
    flat = trained_params(x, "OPQ8,PQ8x8", seed=0, cache_dir=str(tmp_path), opq_niter=2, pq_assign="flat-index")
    assert len(list(tmp_path.glob("faiss-init-*.faiss"))) == 2 and not flat.info["init_cached"]
    assert flat.info["init_pq_assign"] == "flat-index" and "init_pq_assign" not in tables.info
    assert "pq_assign" not in make_method("faiss-opq").record_params()
    assert make_method("distill-vq", {"pq_assign": "flat-index"}).record_params()["pq_assign"] == "flat-index"
