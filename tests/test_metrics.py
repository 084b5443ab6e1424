"""Metrics on hand-built runs equal hand-computed values; flat agrees with BEIR's EvaluateRetrieval."""
import math

import numpy as np
import pytest
from beir.retrieval.evaluation import EvaluateRetrieval

from benchmark.data import load_dataset
from benchmark.harness import ExactReference, SearchSettings, evaluate
from benchmark.vq import exact_index
from benchmark.metrics import overlap_at_k, per_query_measures, ranked_run

QRELS = {"q1": {"a": 2, "c": 1, "z": 1}, "q2": {"b": 1}, "q3": {"x": 1}}
RUN = {"q1": {"b": 0.9, "a": 0.8, "d": 0.7, "c": 0.6},   # a at rank 2, c at rank 4, z never retrieved
       "q2": {"b": 0.5, "a": 0.4},                        # perfect
       "q3": {"a": 0.3}}                                  # nothing relevant


def test_measures_equal_hand_computed_values():
    pq = per_query_measures(RUN, QRELS)
    # trec_eval's nDCG (ir_measures' default provider): linear gain rel / log2(rank + 1)
    ideal_q1 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    dcg_q1 = 2 / math.log2(3) + 1 / math.log2(5)
    assert pq["nDCG@10"]["q1"] == pytest.approx(dcg_q1 / ideal_q1, abs=1e-6)   # 0.5406
    assert pq["nDCG@10"]["q2"] == pytest.approx(1.0)
    assert pq["nDCG@10"]["q3"] == 0.0
    assert pq["RR@10"] == pytest.approx({"q1": 0.5, "q2": 1.0, "q3": 0.0})
    assert pq["R@10"] == pytest.approx({"q1": 2 / 3, "q2": 1.0, "q3": 0.0})
    assert pq["R@1000"] == pytest.approx({"q1": 2 / 3, "q2": 1.0, "q3": 0.0})


def test_query_without_results_scores_zero():
    pq = per_query_measures({"q2": {"b": 1.0}}, QRELS)
    assert pq["RR@10"] == {"q1": 0.0, "q2": 1.0, "q3": 0.0}


def test_ranked_run_drops_identical_ids_and_padding():
    doc_ids = np.array(["q1", "a", "b"], dtype=object)
    run = ranked_run(["q1"], doc_ids, np.array([[0.9, 0.5, 0.1]]), np.array([[0, 1, -1]]),
                     ignore_identical_ids=True)
    assert run == {"q1": {"a": 0.5}}


def test_overlap_at_k():
    approx = np.array([[1, 2, 3, 4], [5, 6, 7, -1]])
    exact = np.array([[4, 3, 9, 8], [5, 6, 7, 8]])
    np.testing.assert_allclose(overlap_at_k(approx, exact, 2), [0.0, 1.0])
    np.testing.assert_allclose(overlap_at_k(approx, exact, 4), [0.5, 0.75])


def test_flat_is_exact_and_matches_beir():
    ds = load_dataset("synthetic:quick")
    split = ds.split("test")
    settings = SearchSettings(latency_queries=5, warmup_queries=1)
    exact_top = ExactReference().top_k(ds, split, 100)
    index = exact_index(ds.doc_emb)
    ev = evaluate(index, ds, split, exact_top, settings)
    assert ev.fidelity == {"overlap@10": 1.0, "overlap@100": 1.0}
    scores, ids = index.search(split.query_emb, 1000)
    results = ranked_run(split.query_ids, np.asarray(ds.doc_ids, dtype=object), scores, ids)
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(split.qrels, results, [10, 100, 1000],
                                                    ignore_identical_ids=False)
    mrr = EvaluateRetrieval.evaluate_custom(split.qrels, results, [10], metric="mrr")
    assert ev.metrics["nDCG@10"] == pytest.approx(ndcg["NDCG@10"], abs=1e-5)
    assert ev.metrics["R@10"] == pytest.approx(recall["Recall@10"], abs=1e-5)
    assert ev.metrics["R@100"] == pytest.approx(recall["Recall@100"], abs=1e-5)
    assert ev.metrics["R@1000"] == pytest.approx(recall["Recall@1000"], abs=1e-5)
    assert ev.metrics["RR@10"] == pytest.approx(mrr["MRR@10"], abs=1e-5)
    assert 0.4 < ev.metrics["nDCG@10"] < 0.9  # a real retrieval problem: neither trivial nor hopeless
    assert set(ev.latency) >= {"p50_ms", "p95_ms", "qps", "threads"} and ev.latency["qps"] > 0
