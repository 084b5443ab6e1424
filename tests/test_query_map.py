"""A method's query-side map (the linear adapter) folded into the faiss index it deploys (benchmark.vq.fold_query_map):
same scores as the map applied before the search, one d x d product per query inside faiss, saved with the index."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from benchmark.cli import main
from benchmark.data import load_dataset
from benchmark.harness import ExactReference, SearchSettings, evaluate, prepare_queries
from benchmark.vq import fold_query_map


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["OPQ8,IVF16,PQ8x4", "IVF16,PQ8x4", "PQ8x4", "OPQ8,PQ8x4fs"])
def test_folded_index_scores_like_the_map_then_the_index(factory):
    rng = np.random.default_rng(0)
    docs, queries = _unit(rng, 3000, 32), _unit(rng, 50, 32)
    m = (np.eye(32) + 0.2 * rng.standard_normal((32, 32))).astype(np.float32)
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(docs)
    index.add(docs)
    if "IVF" in factory:
        faiss.extract_index_ivf(index).nprobe = 4
    want_scores, want_ids = index.search(prepare_queries(queries, m), 10)
    folded = fold_query_map(index, m)
    assert fold_query_map(index, None) is index
    assert folded.ntotal == 3000 and folded.chain.size() == 1               # folded into OPQ, or one new transform
    scores, ids = folded.search(queries, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (ids == want_ids).mean() > 0.99                                   # ties aside
    again = faiss.deserialize_index(faiss.serialize_index(folded))           # what --save-index writes
    np.testing.assert_array_equal(again.search(queries, 10)[1], ids)
    if "IVF" in factory:                                                     # nprobe still reachable through it
        faiss.extract_index_ivf(folded).nprobe = 16
        assert faiss.extract_index_ivf(index).nprobe == 16


def test_a_fit_with_an_adapter_saves_and_searches_the_folded_index(tmp_path):
    """distill-vq trains a query adapter by default: its saved index alone (no map file beside it) searched with the
    raw queries gives the recorded metrics, and the record says the query side is the adapter."""
    out = tmp_path / "run"
    assert main(["--quick", "--methods", "distill-vq", "--out", str(out), "--save-index", "--nprobes", "8"]) == 0
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["setup"]["query_side"] == "adapter"
    assert not list((out / "indexes").glob("*.query_map.npy"))
    index = faiss.read_index(str(out / rec["index"]["path"]))
    assert isinstance(index, faiss.IndexPreTransform) and index.chain.size() == 1   # OPQ matrix x adapter, one
    ds = load_dataset("synthetic:quick")
    split = ds.split(ds.eval_split)
    settings = SearchSettings()
    ev = evaluate(index, ds, split, ExactReference().top_k(ds, split, 100), settings, nprobe=8, timed=False)
    assert ev.metrics["nDCG@10"] == pytest.approx(rec["metrics"]["nDCG@10"], abs=1e-9)
