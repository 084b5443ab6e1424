"""Distill-VQ: losses by hand (the paper's pairwise KL), the tempered STE, write-back equality (faiss == torch),
determinism, rejected configs, mining, and the dev-chosen defaults against faiss-ivfopq on the synthetic default."""
from dataclasses import replace
import math

import faiss
import numpy as np
import pytest
import torch

from benchmark.data import load_dataset
from benchmark.vq.faiss_init import trained_params
from benchmark.harness import SearchSettings, evaluate, prepare_queries
from benchmark.vq import mining
from benchmark.vq.mining import cached_topk, exact_topk
from benchmark.registry import MethodError, TrainData, get_method, make_method
from benchmark.runner import train_data
from benchmark.vq import build_index, encode_pq, fold_query_map, rotate
from benchmark.vq.torch_vq import TorchVQ
from benchmark.vq.candidates import Candidates, candidate_scores, parse_candidates, repeats
from benchmark.vq.torch_vq import ste_quantize, ste_temperature, tempered_ste
from methods._distill_losses import LOSSES, combined_loss

SMALL = {"M": 8, "nlist": 16, "batch_size": 64, "topk": 50, "opq_niter": 4}
FACTORY = "OPQ8,IVF16,PQ8x8"


@pytest.fixture(scope="module")
def quick():
    return load_dataset("synthetic:quick")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dvq-cache"))


def _train(ds, cache, seed=0, labeled=True) -> TrainData:
    td = train_data(ds, seed, "cpu", cache)
    if not labeled:
        td.train_qrels = None
    return td


def _fit(ds, cache, seed=0, **params):
    return make_method("distill-vq", {**SMALL, **params}).fit(_train(ds, cache, seed))


# --- losses on a hand-built example ---------------------------------------------------------------------------

T = torch.tensor([[1.0, 0.0, 0.5]])
S = torch.tensor([[0.5, 0.0, 1.0]])


def test_listnet_and_kl_by_hand():
    # t/tau = [ln 3, 0] -> p = [3/4, 1/4]; s = [0, 0] -> q = [1/2, 1/2]  (tau = 0.5)
    t = torch.tensor([[0.5 * math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)
    # ListNet = -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2
    assert LOSSES["listnet"](t, s, 0.5).item() == pytest.approx(math.log(2.0), abs=1e-6)
    # KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 3/4 ln 3 - ln 2
    assert LOSSES["kl"](t, s, 0.5).item() == pytest.approx(0.75 * math.log(3.0) - math.log(2.0), abs=1e-6)
    # two queries: the mean of the per-query values (second query: t == s -> CE = entropy = ln 2, KL = 0)
    t2, s2 = torch.cat([t, torch.zeros(1, 2)]), torch.cat([s, torch.zeros(1, 2)])
    assert LOSSES["listnet"](t2, s2, 0.5).item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert LOSSES["kl"](t2, s2, 0.5).item() == pytest.approx((0.75 * math.log(3.0) - math.log(2.0)) / 2, abs=1e-6)


def test_mse_by_hand():
    # s - t = [-0.5, 0, 0.5] -> (0.25 + 0 + 0.25) / 3 = 1/6
    assert LOSSES["mse"](T, S, 1.0).item() == pytest.approx(1 / 6, abs=1e-6)


def test_margin_mse_by_hand():
    # teacher's best p = 0; teacher margins t_p - t = [0, 1, 0.5]; student margins s_p - s = [0, 0.5, -0.5]
    # squared differences [0, 0.25, 1] -> mean 1.25 / 3 = 5/12
    assert LOSSES["margin_mse"](T, S, 1.0).item() == pytest.approx(5 / 12, abs=1e-6)


def test_ranknet_by_hand():
    # pairs with t_a > t_j: (0,1) w=1 s_a-s_j=0.5; (0,2) w=0.5 s_a-s_j=-0.5; (2,1) w=0.5 s_a-s_j=1
    # loss = [1 ln(1+e^-0.5) + 0.5 ln(1+e^0.5) + 0.5 ln(1+e^-1)] / (1 + 0.5 + 0.5)
    def sp(x):
        return math.log1p(math.exp(x))
    want = (1.0 * sp(-0.5) + 0.5 * sp(0.5) + 0.5 * sp(-1.0)) / 2.0
    assert LOSSES["ranknet"](T, S, 1.0).item() == pytest.approx(want, abs=1e-6)
    # tau = 0.5 doubles the student differences
    want_half = (1.0 * sp(-1.0) + 0.5 * sp(1.0) + 0.5 * sp(-2.0)) / 2.0
    assert LOSSES["ranknet"](T, S, 0.5).item() == pytest.approx(want_half, abs=1e-6)


def test_ivf_weight_auto_scales_ivf_loss_to_pq_loss_once():
    loss, w = combined_loss(torch.tensor(4.0), torch.tensor(2.0), None)       # w = 2 / 4; loss = 2 + 0.5 * 4
    assert w == pytest.approx(0.5, rel=1e-5) and loss.item() == pytest.approx(4.0, rel=1e-5)
    loss, w = combined_loss(torch.tensor(1.0), torch.tensor(3.0), w)          # kept: 3 + 0.5 * 1
    assert w == pytest.approx(0.5, rel=1e-5) and loss.item() == pytest.approx(3.5, rel=1e-5)
    assert combined_loss(None, torch.tensor(3.0), None) == (torch.tensor(3.0), None)


# --- straight-through estimator -------------------------------------------------------------------------------

def test_ste_forward_is_hard_assignment_and_passes_gradients():
    gen = torch.Generator().manual_seed(0)
    codebooks = torch.randn(4, 256, 3, generator=gen).requires_grad_(True)
    residual = torch.randn(50, 12, generator=gen).requires_grad_(True)
    out = ste_quantize(residual, codebooks)
    codes = encode_pq(codebooks.detach().numpy(), residual.detach().numpy())          # faiss nearest codewords
    hard = torch.cat([codebooks[m, torch.from_numpy(codes[:, m].astype(np.int64))] for m in range(4)], dim=1)
    assert torch.equal(out, hard)
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    assert codebooks.grad.abs().sum() > 0
    assert residual.grad.abs().sum() > 0          # through the soft assignment: the residual (centroids) learn


def _init(ds, cache, seed=0):
    """The faiss init a SMALL fit starts from (same cache entry)."""
    return trained_params(ds.doc_emb, FACTORY, seed=seed, cache_dir=cache, opq_niter=SMALL["opq_niter"])


def test_student_gradients_reach_codebooks_and_centroids(quick, cache):
    init = _init(quick, cache)
    own = np.arange(0, 392, 7).reshape(8, 7)
    shared = np.array([1, 2, 3])
    cand = Candidates(own, shared, repeats(np.hstack([own, np.broadcast_to(shared, (8, 3))])))
    for ste_T in (0.01, None):
        vq = TorchVQ(init, query_adapter=True)
        t, s_ivf, s_pq = candidate_scores(vq, quick.split("train").query_emb[:8], cand, quick.doc_emb, ste_T)
        assert t.shape == s_ivf.shape == s_pq.shape == (8, 10)
        # teacher = exact inner products, own candidates then the shared ones
        q = quick.split("train").query_emb[:8]
        np.testing.assert_allclose(t[:, :7].numpy(), np.einsum("bd,bcd->bc", q, quick.doc_emb[own]), atol=1e-5)
        np.testing.assert_allclose(t[:, 7:].numpy(), q @ quick.doc_emb[shared].T, atol=1e-5)
        (s_ivf.sum() + s_pq.sum()).backward()
        for p in (vq.codebooks, vq.centroids, vq.query_map):
            assert p.grad is not None and p.grad.abs().sum() > 0, (ste_T, p.shape)


# --- write-back: faiss scores == torch scores -----------------------------------------------------------------

def _faiss_top10(vq, ds, queries):
    index = fold_query_map(build_index(vq, ds.doc_emb), vq.query_map)   # the index as deployed
    faiss.extract_index_ivf(index).nprobe = vq.nlist
    return index.search(prepare_queries(queries), 10)


def _assert_torch_equals_faiss(vq, queries, d_faiss, i_faiss):
    """Top-10 scores equal to 1e-4; ids equal except between docs with tied scores (same list and codes)."""
    model = TorchVQ(vq, query_adapter=vq.query_map is not None)
    q_rot = model.encode_queries(torch.from_numpy(queries))
    top = model.all_doc_scores(q_rot).topk(11, dim=1)                 # the 11th shows a tie at rank 10
    d_all, i_all = top.values.numpy(), top.indices.numpy()
    d_torch, i_torch = d_all[:, :10], i_all[:, :10]
    np.testing.assert_allclose(d_faiss, d_torch, atol=1e-4)
    np.testing.assert_allclose(model.scores(q_rot, torch.from_numpy(i_faiss)).detach().numpy(), d_faiss, atol=1e-4)
    for row, col in zip(*np.nonzero(i_faiss != i_torch)):
        assert np.sum(np.abs(d_all[row] - d_torch[row, col]) < 1e-6) > 1, "ids differ at an untied score"


def test_fixed_codes_writeback_equals_torch(quick, cache):
    vq = _fit(quick, cache, codes="fixed", writeback="codes", query_adapter=True)
    assert vq.writeback == "codes" and vq.query_map is not None
    queries = quick.split("test").query_emb[:100]
    _assert_torch_equals_faiss(vq, queries, *_faiss_top10(vq, quick, queries))


def test_ste_preassigned_equals_torch_with_fresh_codes(quick, cache):
    vq = _fit(quick, cache, codes="ste", epochs=0.5)
    assert 0 < vq.info["ste_temperature"] < 0.1 and vq.info["assignment_entropy"] < vq.info["assignment_entropy_T1"]
    assert vq.writeback == "preassigned"
    residual = rotate(vq, quick.doc_emb) - vq.ivf_centroids[vq.doc_assign]
    fresh = encode_pq(vq.pq_codebooks, residual)
    np.testing.assert_array_equal(vq.doc_codes, fresh)
    queries = quick.split("test").query_emb[:100]
    _assert_torch_equals_faiss(vq, queries, *_faiss_top10(vq, quick, queries))


def test_ivf_only_reencodes_residuals_to_the_moved_centroids(quick, cache):
    """distill-vq-ivf-only moves the centroids and keeps faiss's codebooks: every doc's residual to its moved
    centroid is encoded again (the stale faiss codes of the old residuals are not kept), and faiss == torch."""
    vq = make_method("distill-vq-ivf-only", {**SMALL, "epochs": 0.5}).fit(_train(quick, cache))
    assert vq.writeback == "preassigned" and vq.query_map is not None
    residual = rotate(vq, quick.doc_emb) - vq.ivf_centroids[vq.doc_assign]
    np.testing.assert_array_equal(vq.doc_codes, encode_pq(vq.pq_codebooks, residual))
    assert make_method("distill-vq-ivf-only", SMALL).check_config() == []
    assert any("train_pq=False with train_ivf" in p for p in make_method(
        "distill-vq-ivf-only", {**SMALL, "writeback": "codes"}).check_config())
    queries = quick.split("test").query_emb[:100]
    _assert_torch_equals_faiss(vq, queries, *_faiss_top10(vq, quick, queries))


# --- determinism, training moves parameters, errors, presets ---------------------------------------------------

def test_same_seed_same_params_and_training_moves_them(quick, cache):
    a = _fit(quick, cache, candidates="ib+topk+random", epochs=0.5)
    b = _fit(quick, cache, candidates="ib+topk+random", epochs=0.5)
    for x, y in ((a.pq_codebooks, b.pq_codebooks), (a.ivf_centroids, b.ivf_centroids), (a.doc_codes, b.doc_codes)):
        np.testing.assert_array_equal(x, y)
    init = _init(quick, cache)
    assert np.abs(a.pq_codebooks - init.pq_codebooks).max() > 1e-4
    assert np.abs(a.ivf_centroids - init.ivf_centroids).max() > 1e-4
    assert a.info["steps"] == math.ceil(1600 * 0.5 / 64) and a.info["train_queries"] == 1600
    assert a.info["drift_codebooks"] > 0 and a.info["drift_centroids"] > 0 and a.info["lr_centroids"] == 3e-4


def test_labeled_queries_need_labels(quick, cache):
    with pytest.raises(MethodError, match="distill-vq-labeled: needs labeled train queries"):
        make_method("distill-vq-labeled", SMALL).fit(_train(quick, cache, labeled=False))
    with pytest.raises(MethodError, match="gt"):
        make_method("distill-vq", {**SMALL, "candidates": "gt+topk"}).fit(_train(quick, cache))


def test_labeled_and_doc_queries_train(quick, cache):
    vq = make_method("distill-vq-labeled", {**SMALL, "epochs": 0.2}).fit(_train(quick, cache))
    assert vq.info["train_queries"] == 800
    vq = _fit(quick, cache, queries="docs", doc_queries=256, codes="fixed")
    assert vq.info["train_queries"] == 256 and vq.writeback == "codes"


def test_candidate_specs_and_presets():
    assert parse_candidates("gt+ib+topk") == {"gt", "ib", "topk"}
    for bad in ("ib", "topk+bm25"):
        with pytest.raises(ValueError, match="candidate"):
            parse_candidates(bad)
        assert any("candidate" in p for p in make_method("distill-vq", {"candidates": bad}).check_config())
    base = get_method("distill-vq")
    assert base.family == "distillation" and base.params["queries"].default == "unlabeled"
    for name, diff in (("distill-vq-labeled", {"queries", "candidates", "label_weight", "label_scope", "lr_ivf"}),
                       ("distill-vq-ivf-only", {"train_pq", "writeback"}),   # the adapter stays (like for like)
                       ("distill-vq-pq-only", {"train_ivf"})):
        cls = get_method(name)
        assert issubclass(cls, base) and cls.family == "distillation"
        assert {k for k in base.params if base.params[k] != cls.params[k]} == diff
    with pytest.raises(MethodError):
        make_method("distill-vq", {"nope": 1})


def test_mining_matches_brute_force_and_is_cached(tmp_path):
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    want = np.argsort(-(queries @ docs.T), axis=1)[:, :20]
    scores, got = exact_topk(docs, queries, 20, doc_chunk=300)     # 4 doc chunks merged
    np.testing.assert_array_equal(got, want)
    # the GPU path without faiss-GPU (torch matmuls by blocks), run here on the CPU: the same top-k
    t_scores, t_got = mining.torch_exact_topk(docs, queries, 20, "cpu", doc_chunk=300, query_chunk=7)
    np.testing.assert_array_equal(t_got, want)
    np.testing.assert_allclose(t_scores, scores, rtol=1e-5, atol=1e-5)
    ids, info = cached_topk(docs, queries, 20, str(tmp_path))
    np.testing.assert_array_equal(ids, want)
    assert info == {"kind": "exact", "k": 20}
    (path,) = tmp_path.glob("topk-*.npy")
    np.save(path, np.zeros_like(want))                              # a cache hit reads the file back
    assert not cached_topk(docs, queries, 20, str(tmp_path))[0].any()


def test_ivf_teacher_is_cached_and_measures_its_recall(quick, tmp_path, monkeypatch):
    """The approximate teacher (dataset option teacher='ivf'): an IVF-SQ8 index over the corpus, built once and
    cached; its top-K recall against the exact top-K is measured on a sample and recorded with the fit."""
    docs, queries = quick.doc_emb, quick.split("train").query_emb
    exact = exact_topk(docs, queries, 50)[1]
    ids, info = cached_topk(docs, queries, 50, str(tmp_path), teacher={"kind": "ivf", "nlist": 0, "nprobe": 0})
    assert info["kind"] == "ivf" and info["nlist"] == 64 and info["k"] == 50 and info["factory"] == "IVF64,SQ8"
    # nprobe 0: calibrated on other queries than the recall check, the first power of two reaching the target
    check, calib = mining.teacher_samples(len(queries), 0)
    assert len(check) == min(1000, len(queries) // 2) and not set(check) & set(calib)
    assert info["calibration_sample"] == len(calib) > 0 and info["recall_target"] == mining.TEACHER_RECALL == 0.96
    curve = {int(p): r for p, r in info["calibration"].items()}
    assert list(curve) == [p for p in (1, 2, 4, 8, 16, 32, 64)][:len(curve)] and info["nprobe"] == max(curve)
    assert curve[info["nprobe"]] >= 0.96 and all(r < 0.96 for p, r in curve.items() if p < info["nprobe"])
    assert info["nprobe"] < 64                                        # it prunes: not every list
    recall = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(ids, exact)])
    assert info["recall_sample"] == len(check) and info["recall_at_k"] >= 0.95
    assert abs(info["recall_at_k"] - recall) < 0.02                   # the sample speaks for every query
    assert len(list(tmp_path.glob("ivf-teacher-*.faiss"))) == 1
    few, few_info = cached_topk(docs, queries, 50, str(tmp_path), teacher={"kind": "ivf", "nlist": 64, "nprobe": 1})
    assert few_info["nprobe"] == 1 and few_info["nprobe_rule"] == "given" and "calibration" not in few_info
    assert few_info["recall_at_k"] < info["recall_at_k"]            # fewer lists probed: a worse teacher, and it says so
    assert len(list(tmp_path.glob("ivf-teacher-*.faiss"))) == 1     # the same teacher index, probed less
    # a cache hit reads the ids and their measured recall back: neither the teacher index nor an exact scan is redone
    monkeypatch.setattr(mining, "ivf_teacher", lambda *a, **k: pytest.fail("cache hit rebuilt the teacher"))
    monkeypatch.setattr(mining, "exact_topk", lambda *a, **k: pytest.fail("cache hit re-measured the recall"))
    again, again_info = cached_topk(docs, queries, 50, str(tmp_path), teacher={"kind": "ivf", "nlist": 0, "nprobe": 0})
    np.testing.assert_array_equal(again, ids)
    assert again_info == info
    monkeypatch.undo()
    vq = make_method("distill-vq", {**SMALL, "epochs": 0.2}).fit(
        replace(_train(quick, str(tmp_path)), teacher={"kind": "ivf", "nlist": 0, "nprobe": 0}))
    assert vq.info["train_queries_from"]["teacher"]["kind"] == "ivf"
    assert vq.info["train_queries_from"]["teacher"]["recall_at_k"] > 0.9


# --- issue #15: the paper's KL, the tempered STE, the rejected config, defaults vs faiss-ivfopq --------------------

def _pair_kl_by_hand(dt: float, ds: float) -> float:
    """KL between the two-way distributions (sigma(dt), 1 - sigma(dt)) and (sigma(ds), 1 - sigma(ds))."""
    a, b = 1 / (1 + math.exp(-dt)), 1 / (1 + math.exp(-ds))
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def test_kl_is_pairwise_by_hand_and_not_listnet():
    # T = [1, 0, 0.5], S = [0.5, 0, 1], tau = 1: the teacher's best is column 0; pairs (0, 1): teacher margin 1,
    # student margin 0.5; (0, 2): teacher 0.5, student -0.5. KL = mean of the two pair KLs = 0.0744020
    want = (_pair_kl_by_hand(1.0, 0.5) + _pair_kl_by_hand(0.5, -0.5)) / 2
    assert want == pytest.approx(0.0744020, abs=1e-6)
    s = S.clone().requires_grad_(True)
    value = LOSSES["kl"](T, s, 1.0)
    assert value.item() == pytest.approx(want, abs=1e-6)
    # tau = 0.5 doubles both margins
    assert LOSSES["kl"](T, S, 0.5).item() == pytest.approx(
        (_pair_kl_by_hand(2.0, 1.0) + _pair_kl_by_hand(1.0, -1.0)) / 2, abs=1e-6)
    # gradient by hand: d KL / d(student margin) = sigma(ds) - sigma(dt) per pair, averaged over the 2 pairs
    def sig(x):
        return 1 / (1 + math.exp(-x))
    g1, g2 = (sig(0.5) - sig(1.0)) / 2, (sig(-0.5) - sig(0.5)) / 2
    value.backward()
    np.testing.assert_allclose(s.grad.numpy(), [[g1 + g2, -g1, -g2]], atol=1e-6)
    # not ListNet in disguise (the listwise KL's gradient is ListNet's): ListNet leaves the middle column alone here
    # (softmax(T) and softmax(S) give it the same weight), the pairwise KL pushes it down (gradient -g1 > 0.05)
    s2 = S.clone().requires_grad_(True)
    LOSSES["listnet"](T, s2, 1.0).backward()
    assert abs(s2.grad[0, 1].item()) < 1e-6 and -g1 > 0.05


def test_masked_columns_are_ignored():
    # a doc listed twice for a query (mask True on the repeat) counts once: same value as without the column
    t = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    s = torch.tensor([[0.5, 0.0, 1.0, 1.0]])
    mask = torch.tensor([[False, False, False, True]])
    for name in LOSSES:
        assert LOSSES[name](t, s, 0.5, mask).item() == pytest.approx(LOSSES[name](T, S, 0.5).item(), abs=1e-5), name


def test_repeats_mask_marks_later_duplicates_only():
    docs = np.array([[5, 3, 5, 7, 3], [1, 2, 3, 4, 1]])
    np.testing.assert_array_equal(repeats(docs), [[False, False, True, False, True],
                                                   [False, False, False, False, True]])


def test_ste_auto_temperature_is_informative_on_unit_norm_data(quick, cache):
    # unit-norm embeddings: squared residual-to-codeword distances are << 1, so LibVQ's softmax(-d) (T = 1) is
    # uniform over the 256 codewords (entropy ~ ln 256) and its backward pass carries no assignment information
    assert np.allclose(np.linalg.norm(quick.doc_emb[:100], axis=1), 1.0, atol=1e-3)
    vq = TorchVQ(_init(quick, cache))
    T, info = ste_temperature(vq, quick.doc_emb, "auto", seed=0)
    assert info["assignment_entropy_max"] == pytest.approx(math.log(256))
    assert info["assignment_entropy_T1"] > 0.99 * math.log(256)
    assert info["assignment_entropy"] < 0.5 * math.log(256)
    assert 0 < T < 0.1
    # the gradient reaching the residual through the soft assignment: orders of magnitude larger at the auto T
    idx = torch.arange(0, 500)
    x = (vq.rotate(torch.from_numpy(quick.doc_emb[:500])) - vq.ivf_part(idx)).detach()
    grads = []
    for temp in (T, 1.0):
        r = x.detach().clone().requires_grad_(True)
        out = tempered_ste(r, vq.codebooks.detach(), temp)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        grads.append(r.grad.norm().item())
    assert grads[0] > 10 * grads[1]
    # the tempered STE still returns the hard (nearest-codeword) reconstruction
    np.testing.assert_allclose(tempered_ste(x, vq.codebooks.detach(), T).detach().numpy(),
                               ste_quantize(x, vq.codebooks.detach()).detach().numpy(), atol=1e-5)


def test_fixed_codes_with_reencoding_writeback_is_rejected_before_any_work(quick, tmp_path):
    for wb in ("preassigned", "reencode"):
        method = make_method("distill-vq", {**SMALL, "codes": "fixed", "writeback": wb})
        with pytest.raises(MethodError, match=f"codes='fixed'.*writeback='{wb}'"):
            method.fit(_train(quick, str(tmp_path)))
        assert not list(tmp_path.iterdir())          # rejected before the faiss init or mining wrote anything


def test_label_weight_needs_gt_candidates():
    problems = make_method("distill-vq", {"label_weight": 1.0}).check_config()
    assert len(problems) == 1 and problems[0].startswith("label_weight=1.0 needs the labeled positives")


def test_defaults_beat_faiss_ivfopq_on_synthetic(tmp_path):
    """The dev-chosen defaults, not re-tuned, on the default synthetic dataset: nDCG@10 on its test split at
    nprobe 16 of 256 (the operating point of the README's synthetic table), above faiss-ivfopq's."""
    ds = load_dataset("synthetic")
    td = train_data(ds, 0, "cpu", str(tmp_path))
    test = ds.split("test")
    exact = exact_topk(ds.doc_emb, test.query_emb, 100)[1]
    settings = SearchSettings(k=100, latency_queries=5, warmup_queries=1)
    ndcg = {}
    for name in ("faiss-ivfopq", "distill-vq"):
        result = make_method(name, {}).fit(td)
        index = fold_query_map(build_index(result, ds.doc_emb), result.query_map)
        ndcg[name] = evaluate(index, ds, test, exact, settings, nprobe=16).metrics["nDCG@10"]
    assert ndcg["distill-vq"] > ndcg["faiss-ivfopq"] + 0.005, ndcg


def test_label_term_scope_by_hand():
    from methods._distill_losses import label_term
    s = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])   # tau = 1: row 0 -log(3/4), row 1 -log(1/2)
    both = label_term(s, None, 1.0)
    assert both.item() == pytest.approx((math.log(4 / 3) + math.log(2.0)) / 2, abs=1e-6)
    # a row out of scope adds 0 and still counts in the batch mean
    assert label_term(s, None, 1.0, torch.tensor([True, False])).item() == pytest.approx(math.log(4 / 3) / 2,
                                                                                          abs=1e-6)


def test_label_scope_topk_keeps_positives_inside_the_teacher_top_k(quick, cache):
    """label_scope='topk' applies the label term to the sampled positives that lie in their query's exact top-K:
    the share it records matches the share measured by brute force (each query's positives against its top-K)."""
    from benchmark.vq.candidates import training_queries
    td = _train(quick, cache)
    k = 5
    vq = make_method("distill-vq-labeled", {**SMALL, "topk": k, "epochs": 2.0}).fit(td)   # the preset's scope
    qs = training_queries(td, "labeled", {"gt", "topk"}, k, 0, "test")
    _, top = exact_topk(td.doc_emb, qs.emb, k)
    inside = np.mean([np.isin(qs.pos[qs.pos_off[i]:qs.pos_off[i + 1]], top[i]).mean() for i in range(len(qs))])
    assert 0.1 < inside < 0.9                            # both kinds of positive occur: the test can tell them apart
    assert vq.info["label_scope_kept"] == pytest.approx(inside, abs=0.04)   # 1,600 sampled positives
    every = make_method("distill-vq-labeled", {**SMALL, "label_scope": "all", "epochs": 0.2})
    assert "label_scope_kept" not in every.fit(td).info
    assert "label_scope" not in every.record_params()   # the value of the records written before the param existed
    with pytest.raises(MethodError, match="label_scope='topk'"):
        make_method("distill-vq-labeled", {**SMALL, "candidates": "gt+random"}).fit(td)


# --- teacher_scores='one-pass' (issue #29: a memory-mapped corpus larger than RAM is never read at random) ------------

def test_teacher_pass_scores_equal_the_gathered_ones(quick, cache, tmp_path, monkeypatch):
    """teacher_pass reads the (memory-mapped) corpus once in row order, in blocks smaller than it; the scores of every
    top-K and positive pair and the top-1 vectors equal those gathered directly, and a batch's candidate scores equal
    the per-step ones (random columns, unknown to the pass, are gathered)."""
    from benchmark.vq import candidates
    from benchmark.vq.candidates import sample_candidates, teacher_pass, training_queries
    docs = np.lib.format.open_memmap(tmp_path / "docs.npy", mode="w+", dtype=np.float32, shape=quick.doc_emb.shape)
    docs[:] = quick.doc_emb
    docs.flush()
    train = replace(_train(quick, cache), doc_emb=np.load(tmp_path / "docs.npy", mmap_mode="r"))
    qs = training_queries(train, "labeled", {"gt", "topk", "ib"}, 20, 0, "test")
    passed = teacher_pass(qs, train.doc_emb, block=700)                 # 4,000 docs in 6 blocks
    monkeypatch.setattr(candidates, "PAIR_CHUNK", 97)                    # and a block's pairs in chunks
    again = teacher_pass(qs, train.doc_emb, block=100_000)
    np.testing.assert_array_equal(again.topk_scores, passed.topk_scores)
    np.testing.assert_array_equal(again.top1_emb, passed.top1_emb)
    want = np.einsum("qd,qkd->qk", qs.emb, quick.doc_emb[qs.topk])
    np.testing.assert_allclose(passed.topk_scores, want, rtol=0, atol=2e-6)
    rows = np.repeat(np.arange(len(qs)), np.diff(qs.pos_off))
    np.testing.assert_allclose(passed.pos_scores, np.einsum("ij,ij->i", qs.emb[rows], quick.doc_emb[qs.pos]), atol=2e-6)
    np.testing.assert_array_equal(passed.top1_emb, quick.doc_emb[qs.topk[:, 0]])
    vq = TorchVQ(_init(quick, cache))
    batch = np.arange(5, 69)
    for sources in ({"gt", "topk", "ib"}, {"topk", "ib", "random"}):
        got, ref = (sample_candidates(s, batch, np.random.default_rng(3), sources, topk_sample=7, num_random=4,
                                      ib_docs="top1", num_docs=len(quick.doc_emb)) for s in (passed, qs))
        np.testing.assert_array_equal(got.own, ref.own)
        np.testing.assert_array_equal(got.shared, ref.shared)
        t_got = candidate_scores(vq, qs.emb[batch], got, train.doc_emb, None)[0]
        t_ref = candidate_scores(vq, qs.emb[batch], ref, train.doc_emb, None)[0]
        torch.testing.assert_close(t_got, t_ref, rtol=0, atol=2e-6)
    assert np.isnan(got.own_teacher).sum() == len(batch) * 4 and ref.own_teacher is None   # the random columns


def test_one_pass_teacher_trains_like_per_step(quick, cache):
    """Same seed: teacher_scores='one-pass' follows per-step training up to float summation order; the param stays
    out of records at its default (committed fit ids unchanged) and its pass is timed."""
    a = _fit(quick, cache, epochs=0.5)
    b = _fit(quick, cache, epochs=0.5, teacher_scores="one-pass")
    np.testing.assert_allclose(a.pq_codebooks, b.pq_codebooks, atol=1e-4)
    np.testing.assert_allclose(a.ivf_centroids, b.ivf_centroids, atol=1e-4)
    assert np.abs(a.pq_codebooks - _init(quick, cache).pq_codebooks).max() > 1e-3        # and training moved them
    assert b.info["teacher_pass_seconds"] > 0 and "teacher_pass_seconds" not in a.info
    assert "teacher_scores" not in make_method("distill-vq", {}).record_params()
