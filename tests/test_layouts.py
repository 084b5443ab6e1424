"""Objective x layout (issue #26): every learned objective runs flat and with an IVF, each layout starting from the
faiss init of its reconstruction baseline (the same cache entry), and the query adapter is the shared one."""
from __future__ import annotations

import numpy as np

from benchmark.data import load_dataset
from benchmark.registry import make_method
from benchmark.runner import train_data

# objective -> (flat layout, IVF layout); the reconstruction baselines of the two layouts
LAYOUTS = {"distillation": ("distill-vq-flat", "distill-vq"),
           "distillation, labeled": ("distill-vq-labeled-flat", "distill-vq-labeled"),
           "contrastive (InfoNCE)": ("infonce-pq", "infonce-pq-ivf")}
BASELINES = ("faiss-opq", "faiss-ivfopq")


def test_each_objective_has_both_layouts_on_its_baselines_init():
    flat, ivf = (make_method(b, {"M": 16}).factory() for b in BASELINES)
    assert (flat, ivf) == ("OPQ16,PQ16x8", "OPQ16,IVF256,PQ16x8")
    for objective, (f, i) in LAYOUTS.items():
        assert make_method(f, {"M": 16}).factory() == flat, objective
        assert make_method(i, {"M": 16}).factory() == ivf, objective
        assert "nlist" not in make_method(f).config and "lr_ivf" not in make_method(f).config


def test_infonce_ivf_trains_centroids_and_the_shared_query_adapter(tmp_path):
    ds = load_dataset("synthetic:quick")
    train = train_data(ds, 0, "cpu", str(tmp_path))
    params = {"nlist": 32, "opq_niter": 5, "epochs": 0.5, "query_adapter": True, "lr_adapter": 1e-2}
    vq = make_method("infonce-pq-ivf", params).fit(train)
    init = make_method("faiss-ivfopq", {"nlist": 32, "opq_niter": 5}).fit(train)
    assert init.info["init_cached"]              # faiss-ivfopq finds the init infonce-pq-ivf trained: one entry
    assert np.abs(vq.ivf_centroids - init.ivf_centroids).max() > 1e-4
    assert np.abs(vq.query_map - np.eye(ds.dim)).max() > 1e-4
    np.testing.assert_array_equal(vq.doc_assign, init.doc_assign)   # each doc keeps its list
    assert "query_adapter" not in make_method("infonce-pq").record_params()   # earlier records keep their ids


def test_768_d_through_every_code_path_at_equal_code_bytes(tmp_path, data_dir):
    """Issue #28: 768-d vectors (all-mpnet-base-v2's width; M=16 cuts 48-d sub-vectors) through each way a method
    reaches an index: faiss-native PQ / IVF-OPQ, a learned objective per family on the shared IVF-OPQ init (codes
    written back), 4-bit codes learned (score-aware) and native (fast-scan): every one holds 16 code bytes per doc."""
    from benchmark.cli import main
    import json
    out = tmp_path / "d768"
    methods = "faiss-pq,faiss-ivfopq,distill-vq,jpq-ivf,infonce-pq-ivf,score-aware,faiss-pq-fastscan"
    opts = ["dim=768", "num_docs=2000", "num_train=300", "num_unlabeled=300", "num_test=100", "signal_dim=48"]
    argv = ["--quick", "--datasets", "synthetic", "--methods", methods, "--param", "M=16", "--param", "opq_niter=2",
            "--nprobes", "4", "--out", str(out)] + [a for o in opts for a in ("--dataset-opt", o)]
    assert main(argv) == 0
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in recs} == set(methods.split(","))
    assert all(r["status"] == "ok" and r["index"]["bytes_per_vector"] == 16 for r in recs)
    assert all(r["encoder"]["dim"] == 768 for r in recs)
    factories = {r["method"]: r["index"]["factory"] for r in recs}
    assert factories["distill-vq"] == factories["jpq-ivf"] == "OPQ16,IVF32,PQ16x8"     # the same layout and init
    assert factories["score-aware"] == factories["faiss-pq-fastscan"] == "PQ32x4fs"   # 32 blocks of 24 dims, 4 bits
