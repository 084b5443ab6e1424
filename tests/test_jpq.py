"""JPQ (methods/jpq.py): the losses by hand, candidate building, faiss == torch after training, labels, seeds."""
from __future__ import annotations

import math
import re

import faiss
import numpy as np
import pytest
import torch

from benchmark.data import load_dataset
from benchmark.vq.faiss_init import trained_params
from benchmark.harness import prepare_queries
from benchmark.registry import MethodError, TrainData, make_method
from benchmark.runner import train_data
from benchmark.vq import build_index, fold_query_map, reconstruct
from benchmark.vq.torch_vq import TorchVQ
from benchmark.vq.mining import index_topk
from methods.jpq import build_candidates, labeled_queries, lambda_loss, lambda_loss_all_pairs, softmax_loss

FAST = {"M": 8, "top_k": 50, "opq_niter": 2, "max_train_points": 2000}   # 64-d quick preset; a cheap init
FAST_IVF = {**FAST, "nlist": 16}


@pytest.fixture(scope="module")
def quick():
    return load_dataset("synthetic:quick")


@pytest.fixture(scope="module")
def train(quick, tmp_path_factory) -> TrainData:
    return train_data(quick, seed=0, device="cpu", cache_dir=str(tmp_path_factory.mktemp("cache")))


def one_query() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates in retrieval order (ranks 1, 2, 3); only the rank-2 doc is relevant."""
    return torch.tensor([[0.5, 0.2, 0.4]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)


def test_lambda_loss_by_hand() -> None:
    scores, grade, valid = one_query()
    # pairs (relevant rank 2, irrelevant rank j): softplus(s_j - s_2) * |1/2 - 1/j|, averaged over the 2 pairs
    #   j=1: log(1 + e^(0.5-0.2)) = log(1 + e^0.3) = 0.854355, weight |1/2 - 1/1| = 1/2
    #   j=3: log(1 + e^(0.4-0.2)) = log(1 + e^0.2) = 0.798139, weight |1/2 - 1/3| = 1/6
    #   loss = (0.854355 / 2 + 0.798139 / 6) / 2 = (0.427178 + 0.133023) / 2 = 0.280100
    expected = (math.log(1 + math.exp(0.3)) / 2 + math.log(1 + math.exp(0.2)) / 6) / 2
    assert expected == pytest.approx(0.280100, abs=1e-6)
    assert lambda_loss(scores, grade, valid, lambda_cut=0).item() == pytest.approx(expected, rel=1e-6)
    # lambda_cut=2 zeroes 1/rank beyond rank 2: the j=3 weight becomes |1/2 - 0| = 1/2
    #   loss = (0.854355 / 2 + 0.798139 / 2) / 2 = 0.413124
    cut = (math.log(1 + math.exp(0.3)) / 2 + math.log(1 + math.exp(0.2)) / 2) / 2
    assert lambda_loss(scores, grade, valid, lambda_cut=2).item() == pytest.approx(cut, rel=1e-6)
    # temperature 0.5 doubles the score differences: softplus(0.6) and softplus(0.4)
    hot = (math.log(1 + math.exp(0.6)) / 2 + math.log(1 + math.exp(0.4)) / 6) / 2
    assert lambda_loss(scores, grade, valid, 0, temperature=0.5).item() == pytest.approx(hot, rel=1e-6)


def test_softmax_loss_by_hand() -> None:
    scores, grade, valid = one_query()
    # logits = scores / 0.5 = [1.0, 0.4, 0.8]; target = [0, 1, 0]
    #   loss = -log(e^0.4 / (e^1.0 + e^0.4 + e^0.8)) = log(2.718282 + 1.491825 + 2.225541) - 0.4
#        = log(6.435648) - 0.4 = 1.861852 - 0.4 = 1.461852
    expected = math.log(math.exp(1.0) + math.exp(0.4) + math.exp(0.8)) - 0.4
    assert expected == pytest.approx(1.461852, abs=1e-6)
    assert softmax_loss(scores, grade, valid, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # an invalid (padding) candidate takes no probability mass
    masked = softmax_loss(torch.tensor([[0.5, 0.2, 0.4, 9.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]]),
                          torch.tensor([[True, True, True, False]]), temperature=0.5)
    assert masked.item() == pytest.approx(expected, rel=1e-6)


def test_learning_rates() -> None:
    assert make_method("jpq", {"lr": "reference"}).learning_rates() == {"codebooks": 5e-6}      # JPQ, M <= 24
    assert make_method("jpq", {"lr": "reference", "M": 32}).learning_rates() == {"codebooks": 2e-5}
    rates = make_method("jpq-ivf", {"lr": 0.01, "query_adapter": True}).learning_rates()
    assert rates == {"codebooks": 0.01, "centroids": 0.01, "query_map": 1e-2}
    assert make_method("jpq", {"adapter_lr": "reference", "query_adapter": True}).learning_rates()["query_map"] == 5e-6


@pytest.mark.parametrize("params, expected", [
    ({"lr": "fast"}, "lr='fast': expected float > 0 or None, 'reference'"),
    ({"lr": 0.0}, "lr=0.0: expected float > 0"),
    ({"loss": "hinge"}, "loss='hinge': expected one of 'lambda', 'softmax'"),
    ({"label_fraction": 1.5}, "label_fraction=1.5: expected float > 0 and <= 1"),
    ({"top_k": 0}, "top_k=0: expected int >= 1"),
])
def test_typed_params_reject_bad_values_before_any_work(params: dict, expected: str) -> None:
    with pytest.raises(MethodError, match=re.escape(f"method 'jpq': {expected}")):
        make_method("jpq", params)


def test_build_candidates_appends_missing_relevant() -> None:
    top = torch.tensor([[5, 3, 7]])
    rel_idx, rel_grade = torch.tensor([[3, 9, -1]]), torch.tensor([[1.0, 2.0, 0.0]])
    idx, grade, valid = build_candidates(top, rel_idx, rel_grade)
    # doc 3 was retrieved at rank 2 (grade 1); doc 9 was not and is appended at rank 4 (grade 2)
    assert idx[0, :4].tolist() == [5, 3, 7, 9]
    assert grade[0, :4].tolist() == [0.0, 1.0, 0.0, 2.0]
    assert valid[0].tolist() == [True, True, True, True, False, False]


def test_fold_single_centroid_keeps_reconstructions(train: TrainData) -> None:
    method = make_method("jpq", FAST)
    ivf1 = trained_params(train.doc_emb, method.factory(), seed=0, cache_dir=train.cache_dir,
                          max_train_points=FAST["max_train_points"], opq_niter=FAST["opq_niter"])
    flat = method.init_params(train)
    assert flat.nlist == 0 and flat.factory == "OPQ8,PQ8x8"
    np.testing.assert_allclose(reconstruct(flat), reconstruct(ivf1), atol=1e-6)


@pytest.mark.parametrize("name,params", [("jpq", FAST), ("jpq-ivf", {**FAST_IVF, "query_adapter": True})])
def test_faiss_search_equals_torch_scores(quick, train: TrainData, name: str, params: dict) -> None:
    vq = make_method(name, params).fit(train)
    assert vq.writeback == "codes" and vq.info["steps"] == 25
    index = fold_query_map(build_index(vq, quick.doc_emb), vq.query_map)   # the index as deployed
    if vq.nlist:
        faiss.extract_index_ivf(index).nprobe = vq.nlist      # exhaustive, like the training-time retrieval
    queries = quick.split("test").query_emb[:100]
    faiss_scores, faiss_ids = index.search(prepare_queries(queries), 10)
    model = TorchVQ(vq, query_adapter=vq.query_map is not None)
    top = model.all_doc_scores(model.encode_queries(torch.from_numpy(queries))).topk(10, dim=1)
    np.testing.assert_allclose(faiss_scores, top.values.numpy(), atol=1e-4)
    # the ids match, up to the order of exact ties: docs with identical codes (and list), e.g. near-duplicates
    torch_ids = top.indices.numpy()
    differ = faiss_ids != torch_ids
    key = vq.doc_codes if not vq.nlist else np.hstack([vq.doc_codes, vq.doc_assign[:, None]])
    np.testing.assert_array_equal(key[faiss_ids[differ]], key[torch_ids[differ]])
    assert differ.mean() < 0.01


def test_missing_labels_raise(train: TrainData) -> None:
    unlabeled = TrainData(doc_emb=train.doc_emb, doc_ids=train.doc_ids, train_query_emb=train.train_query_emb,
                          train_query_ids=train.train_query_ids, train_qrels=None, cache_dir=train.cache_dir)
    with pytest.raises(MethodError, match="jpq: needs labeled train queries"):
        make_method("jpq", FAST).fit(unlabeled)


def test_same_seed_same_codebooks(train: TrainData) -> None:
    params = {**FAST, "epochs": 0.5}
    a, b = (make_method("jpq", params).fit(train) for _ in range(2))
    np.testing.assert_array_equal(a.pq_codebooks, b.pq_codebooks)
    untimed = [{k: v for k, v in vq.info.items() if "seconds" not in k and k not in ("queries_per_s", "init_cached")}
               for vq in (a, b)]
    assert untimed[0] == untimed[1] and untimed[0]["train_rr@10"] > 0
    assert untimed[0]["drift_codebooks"] > 0 and untimed[0]["lr_codebooks"] == 1e-3 and untimed[0]["steps"] == 13


def test_label_fraction_subsamples(train: TrainData) -> None:
    n = len(train.train_query_ids)
    labels = labeled_queries(train, 0.25, seed=0)
    assert len(labels.query_emb) == round(n * 0.25)
    rows = {tuple(r) for r in np.asarray(train.train_query_emb).round(6).tolist()}
    assert all(tuple(r) in rows for r in labels.query_emb.numpy().round(6).tolist())
    assert not torch.equal(labels.query_emb, labeled_queries(train, 0.25, seed=1).query_emb)
    vq = make_method("jpq", {**FAST, "label_fraction": 0.25}).fit(train)
    assert vq.info["train_queries"] == round(n * 0.25) and vq.info["steps"] == math.ceil(n * 0.25 / 32)


def test_table_scores_equal_reconstruction_scores_with_gradients(train: TrainData) -> None:
    # TorchVQ.scores sums per-query lookup tables (as faiss does); the definition is <q, o(d) + PQ(d)> over the
    # reconstructed docs. Same values and the same gradients (float64, so rounding cannot hide a wrong term).
    vq = make_method("jpq-ivf", FAST_IVF).init_params(train)
    models = [TorchVQ(vq, query_adapter=True).double() for _ in range(2)]
    models[0].query_map.data += 0.01 * torch.randn(models[0].query_map.shape, dtype=torch.float64,
                                                   generator=torch.Generator().manual_seed(1))
    models[1].load_state_dict(models[0].state_dict())
    q = torch.from_numpy(np.asarray(train.train_query_emb[:8], dtype=np.float64))
    idx = torch.randint(0, train.num_docs, (8, 30), generator=torch.Generator().manual_seed(0))
    table = models[0].scores(models[0].encode_queries(q), idx)
    q_rot = models[1].encode_queries(q)
    reference = torch.einsum("bd,bkd->bk", q_rot, models[1].reconstruct(idx))
    torch.testing.assert_close(table, reference, rtol=0, atol=1e-10)
    weights = torch.randn(table.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (table * weights).sum().backward()
    (reference * weights).sum().backward()
    for name in ("codebooks", "centroids", "query_map"):
        g0, g1 = getattr(models[0], name).grad, getattr(models[1], name).grad
        assert g0 is not None and g0.abs().max() > 0, name
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-10, msg=name)
    np.testing.assert_array_equal(models[0].lookup_scores(models[0].encode_queries(q), idx).numpy(),
                                  table.detach().numpy())


def test_negative_pool_is_the_init_index_top(train: TrainData) -> None:
    vq = make_method("jpq-ivf", FAST_IVF).init_params(train)
    queries = np.asarray(train.train_query_emb[:50], dtype=np.float32)
    pool, info = index_topk(vq, train.doc_emb, queries, 40, cache_dir=train.cache_dir)
    assert info == {"kind": "index", "k": 40, "nprobe": 16, "nlist": 16, "refilled": 0}
    assert pool.dtype == np.int32 and pool.shape == (50, 40)
    model = TorchVQ(vq)
    scores = model.all_doc_scores(model.encode_queries(torch.from_numpy(queries)))
    # the pool is the faiss top-40 of the init index: its scores are the 40 largest of the exhaustive torch scores
    np.testing.assert_allclose(scores.gather(1, torch.from_numpy(pool).long()).numpy(),
                               scores.topk(40, dim=1).values.numpy(), atol=1e-5)
    np.testing.assert_array_equal(index_topk(vq, train.doc_emb, queries, 40, cache_dir=train.cache_dir)[0], pool)


def test_pool_mined_from_a_few_lists(train: TrainData) -> None:
    """mine_nprobe (issue #29): the pool comes from the probed lists only (the cost bounded at scale), every row
    full (a query whose probed lists hold fewer than k docs is searched over every list), the same as the
    exhaustive pool at mine_nprobe = nlist; a flat layout or a value above nlist is refused before any work."""
    vq = make_method("jpq-ivf", FAST_IVF).init_params(train)
    queries = np.asarray(train.train_query_emb[:200], dtype=np.float32)
    full, _ = index_topk(vq, train.doc_emb, queries, 100, cache_dir=train.cache_dir)
    same, info = index_topk(vq, train.doc_emb, queries, 100, cache_dir=train.cache_dir, nprobe=16)
    np.testing.assert_array_equal(same, full)
    assert info["nprobe"] == 16 and info["refilled"] == 0
    few, info = index_topk(vq, train.doc_emb, queries, 100, cache_dir=train.cache_dir, nprobe=2)
    assert info["nprobe"] == 2 and (few >= 0).all() and few.shape == (200, 100)
    lists = vq.doc_assign                               # each doc's IVF list
    q_rot = queries @ vq.rotation.T if vq.rotation is not None else queries
    probed = np.argsort(-(q_rot @ vq.ivf_centroids.T), axis=1)[:, :2]
    in_probed = np.array([np.isin(lists[row], p).all() for row, p in zip(few, probed)])
    # the rows mined from two lists hold only their docs; the refilled ones (lists too small) come from every list
    assert in_probed.sum() == 200 - info["refilled"] and info["refilled"] < 200
    overlap = np.mean([len(np.intersect1d(a, b)) / 100 for a, b in zip(few, full)])
    assert 0.3 < overlap < 1.0                          # pruned, but mostly the same top (0.71 here)
    sizes = np.bincount(lists, minlength=16)
    deep, deep_info = index_topk(vq, train.doc_emb, queries, 300, cache_dir=train.cache_dir, nprobe=1)
    short = sizes[probed[:, 0]] < 300                   # a single list holds fewer than 300 docs
    assert short.any() and deep_info["refilled"] == short.sum() and (deep >= 0).all()
    assert all(len(set(row)) == 300 for row in deep)
    fit = make_method("jpq-ivf", {**FAST_IVF, "epochs": 0.2, "mine_nprobe": 2}).fit(train)
    assert fit.info["negative_mining"]["nprobe"] == 2 and 0.0 < fit.info["pool_recall"] <= 1.0
    with pytest.raises(MethodError, match="mine_nprobe=2 needs an IVF layout"):
        make_method("jpq", {**FAST, "mine_nprobe": 2}).fit(train)
    with pytest.raises(MethodError, match=r"mine_nprobe must be <= nlist \(16\), got 17"):
        make_method("jpq-ivf", {**FAST_IVF, "mine_nprobe": 17}).fit(train)
    with pytest.raises(MethodError, match="nothing to mine"):
        make_method("jpq-ivf", {**FAST_IVF, "negatives": "dynamic", "mine_nprobe": 2}).fit(train)


def test_pool_of_every_doc_trains_like_dynamic_negatives(train: TrainData) -> None:
    params = {**FAST, "epochs": 0.5}
    dynamic = make_method("jpq", {**params, "negatives": "dynamic"}).fit(train)
    full_pool = make_method("jpq", {**params, "pool_size": train.num_docs}).fit(train)
    assert full_pool.info["pool_recall"] == 1.0 and "pool_recall" not in dynamic.info
    np.testing.assert_allclose(full_pool.pq_codebooks, dynamic.pq_codebooks, atol=1e-5)
    small = make_method("jpq", {**params, "pool_size": 60}).fit(train)       # top_k 50 of a 60-doc pool
    assert 0.5 < small.info["pool_recall"] < 1.0
    with pytest.raises(MethodError, match="pool_size must be >= top_k"):
        make_method("jpq", {**params, "pool_size": 10}).fit(train)


@pytest.mark.parametrize("lambda_cut", [0, 50])
def test_lambda_loss_equals_all_pairs_definition(lambda_cut: int) -> None:
    """The loss forms pairs from the graded rows only: value and gradient equal the all-pairs definition, with
    graded qrels (pairs between grades), invalid slots, a row without any relevant candidate."""
    gen = torch.Generator().manual_seed(3)
    B, K = 16, 120
    scores = torch.randn(B, K, generator=gen, dtype=torch.float64, requires_grad=True)
    grade = torch.zeros(B, K, dtype=torch.float64)
    for b in range(1, B):                               # row 0 has no relevant candidate
        hits = torch.randint(0, K, (1 + b % 4,), generator=gen)
        grade[b, hits] = torch.randint(1, 4, (len(hits),), generator=gen).double()
    valid = torch.rand(B, K, generator=gen) > 0.1
    got = lambda_loss(scores, grade, valid, lambda_cut, 0.05)
    want = lambda_loss_all_pairs(scores, grade, valid, lambda_cut, 0.05)
    assert got.item() == pytest.approx(want.item(), rel=1e-12) and want.item() > 0.1
    g_got, = torch.autograd.grad(got, scores)
    g_want, = torch.autograd.grad(want, scores)
    assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-14) and g_want.abs().max() > 1e-3
    none = lambda_loss(scores, torch.zeros_like(grade), valid, lambda_cut, 0.05)
    assert none.item() == 0.0 and none.requires_grad


def test_pool_refresh_follows_the_model(train: TrainData) -> None:
    """pool_refresh (issue #29): a pool re-mined from the current index before every step ranks what dynamic
    negatives rank (the same codebooks); one block as long as training is the one-time pool of the init index; in
    between, each query is mined once per epoch, in ceil(steps / R) blocks, the mining time kept out of the loop's."""
    params = {**FAST, "epochs": 0.5, "pool_size": 80}
    dynamic = make_method("jpq", {**params, "negatives": "dynamic"}).fit(train)
    every_step = make_method("jpq", {**params, "pool_refresh": 1}).fit(train)
    np.testing.assert_allclose(every_step.pq_codebooks, dynamic.pq_codebooks, atol=1e-5)
    steps = every_step.info["steps"]
    assert every_step.info["negative_mining"]["blocks"] == steps and every_step.info["pool_recall"] == 1.0
    once = make_method("jpq", params).fit(train)
    one_block = make_method("jpq", {**params, "pool_refresh": 10 ** 6}).fit(train)
    np.testing.assert_array_equal(one_block.pq_codebooks, once.pq_codebooks)
    assert one_block.info["negative_mining"]["blocks"] == 1
    fit = make_method("jpq-ivf", {**FAST_IVF, "epochs": 0.5, "pool_refresh": 7, "mine_nprobe": 4}).fit(train)
    mining = fit.info["negative_mining"]
    assert mining["blocks"] == math.ceil(fit.info["steps"] / 7) and mining["nprobe"] == 4
    assert mining["queries_mined"] == fit.info["steps"] * fit.info["batch_size"]       # half an epoch: no repeats
    assert fit.info["mining_seconds"] == fit.info["before_step_seconds"] > 0
    assert not np.array_equal(fit.pq_codebooks, make_method("jpq-ivf", {**FAST_IVF, "epochs": 0.5,
                                                                        "mine_nprobe": 4}).fit(train).pq_codebooks)
    with pytest.raises(MethodError, match="pool_refresh=5 needs negatives='pool'"):
        make_method("jpq", {**FAST, "negatives": "dynamic", "pool_refresh": 5}).fit(train)
