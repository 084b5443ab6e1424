"""Scale-sweep helpers and the chunked exact reference (no full in-RAM copy of a memory-mapped corpus)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import faiss
import numpy as np

from benchmark.data import RetrievalDataset, Split
from benchmark.harness import ExactReference
from benchmark.vq.mining import exact_topk

SCALE = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


def _scale():
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_topk_chunked_equals_flat(tmp_path):
    rng = np.random.default_rng(0)
    docs = np.lib.format.open_memmap(tmp_path / "docs.npy", mode="w+", dtype=np.float32, shape=(3000, 16))
    docs[:] = _unit(rng, 3000, 16)
    q = _unit(rng, 50, 16)
    flat = faiss.IndexFlatIP(16)
    flat.add(np.ascontiguousarray(docs))
    d_ref, i_ref = flat.search(q, 20)
    d, i = exact_topk(np.load(tmp_path / "docs.npy", mmap_mode="r"), q, 20, doc_chunk=700)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-6)
    assert (i == i_ref).mean() > 0.99  # ties aside, same ranking


def test_exact_reference_pads_when_fewer_docs_than_k():
    rng = np.random.default_rng(1)
    docs, q = _unit(rng, 30, 8), _unit(rng, 4, 8)
    split = Split("test", [f"q{i}" for i in range(4)], q, {})
    ds = RetrievalDataset("tiny", [f"d{i}" for i in range(30)], docs, {"test": split})
    top = ExactReference().top_k(ds, split, 100)
    assert top.shape == (4, 100)
    assert (top[:, 30:] == -1).all() and sorted(top[0, :30]) == list(range(30))


def test_scale_choices():
    scale = _scale()
    assert [scale.nlist_for(n) for n in (10_000, 100_000, 1_000_000)] == [512, 1024, 4096]
    assert scale.train_points_for(10_000, 512) == 10_000
    assert scale.train_points_for(1_000_000, 4096) == 39 * 4096
    results = [{"n": n, "status": "ok", "child_maxrss_mb": 100.0,
                "stages": {"fit": {"seconds": 2e-4 * n}, "train/epoch": {"seconds": 5.0}}}
               for n in (1000, 10_000, 100_000)]
    exps = scale.exponents(results)
    assert abs(exps["fit"] - 1.0) < 1e-9 and abs(exps["train/epoch"]) < 1e-9 and abs(exps["peak_rss"]) < 1e-9


def test_synthetic_spills_big_parent_offsets_to_disk_with_the_same_values(tmp_path, monkeypatch):
    """At MS MARCO size the per-parent nuisance offsets are 6.4 GB: with out_path they live in a temporary file beside
    the docs (issue #29) and the generated docs and queries are exactly those of the in-RAM generator."""
    import tracemalloc

    from benchmark.data import synthetic
    monkeypatch.setattr(synthetic, "CHUNK", 1024)            # small doc chunks, so the offsets dominate the peak
    opts = dict(num_docs=80_000, dim=64, num_train=50, num_unlabeled=0, num_test=20, seed=3)
    offsets = 20_000 * 56 * 4                                # parents x nuisance dims, float32: 4.5 MB

    def generate(**extra):
        tracemalloc.start()
        ds = synthetic.make_synthetic(**opts, **extra)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return ds, peak
    ram, ram_peak = generate()
    monkeypatch.setattr(synthetic, "SPILL_BYTES", 64 * 1024)
    disk, disk_peak = generate(out_path=str(tmp_path / "docs.npy"))
    np.testing.assert_array_equal(np.asarray(disk.doc_emb), ram.doc_emb)
    for name in ram.splits:
        np.testing.assert_array_equal(disk.split(name).query_emb, ram.split(name).query_emb)
        assert disk.split(name).qrels == ram.split(name).qrels
    # the docs themselves (20 MB) are in RAM only in the first run; the offsets are in RAM only in the first run too
    assert ram_peak - disk_peak > 80_000 * 64 * 4 + 0.8 * offsets, (ram_peak, disk_peak)
    assert [p.name for p in tmp_path.iterdir()] == ["docs.npy"]   # the spill folder is gone


def test_scale_sweep_shares_a_size_between_methods_and_resumes(tmp_path):
    """bench/scale.py (issue #29): the methods of a size share its generated data and faiss init (the second method
    reads the init from the cache, marked as such), and --resume reads finished (size, method) results back instead
    of running them again."""
    scale = _scale()
    argv = ["--sizes", "2000", "--dim", "64", "--M", "8", "--methods", "faiss-ivfopq,jpq-ivf", "--train-queries",
            "200", "--test-queries", "50", "--K", "10", "--epochs", "0.1", "--mine-nprobe", "0", "--threads", "1",
            "--workdir", str(tmp_path / "w"), "--resume"]
    scale.main(argv)
    first = json.loads((tmp_path / "w" / "scale-results.json").read_text())["results"]
    assert [(r["method"], r["status"]) for r in first] == [("faiss-ivfopq", "ok"), ("jpq-ivf", "ok")]
    assert "cached" not in first[0]["stages"]["init"] and first[1]["stages"]["init"]["cached"]
    assert first[1]["params"]["mine_nprobe"] == max(1, first[1]["nlist"] // 16)   # 0 = nlist/16
    assert first[1]["stages"]["generate"] == {**first[0]["stages"]["generate"], "cached": True}
    # the --dry-run model's estimate of each stage rides along, for the measured / estimated column
    assert {"init", "build", "exact", "eval"} <= set(first[0]["estimate"]["seconds"])
    assert {"mining", "train"} <= set(first[1]["estimate"]["seconds"])
    assert all(v > 0 for r in first for k, v in r["estimate"]["seconds"].items() if k != "build")
    scale.main(argv)                                                  # everything done: read back, nothing run
    again = json.loads((tmp_path / "w" / "scale-results.json").read_text())["results"]
    assert all(r["resumed"] for r in again)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in first]
    # the committed scale report is built from those result files: every number from them, cached stages marked
    spec = importlib.util.spec_from_file_location("bench_scale_report", SCALE.with_name("scale_report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    nlist = first[0]["nlist"]
    config = tmp_path / "msmarco-like.toml"   # configs/msmarco.toml's form: npy: ${VQBENCH_MSMARCO}, the run's layout
    config.write_text(f'out = "{tmp_path / "planned"}"\n[datasets.synth]\nname = "npy:${{VQBENCH_MSMARCO:-nowhere}}"\n'
                      f'split = "dev"\n[search]\nnprobes = [1, {nlist}]\n[[runs]]\nmethods = ["faiss-ivfopq"]\n'
                      f'params = {{ M = 8, nlist = {nlist} }}\n[[runs]]\nmethods = ["jpq-ivf"]\n'
                      f'params = {{ M = 8, nlist = {nlist}, mine_nprobe = {nlist // 16} }}\n')
    env_before = os.environ.get("VQBENCH_MSMARCO")
    text = report.write_report([tmp_path / "w"], tmp_path / "rep", config).read_text()
    layout = tmp_path / "w" / "npy-n2000"
    assert (layout / "corpus.npy").resolve() == (tmp_path / "w" / "n2000" / "docs.npy").resolve()
    assert len((layout / "qrels" / "dev.tsv").read_text().splitlines()) > 50      # header + >= 1 judgment per query
    dry = (tmp_path / "rep" / "dry-run.txt").read_text()
    assert "2,000 docs x 64-d, 200 train queries, 50 evaluated queries" in dry
    rows = [line.split(" | ") for line in text.split("## The `--dry-run`")[1].split("## Per size")[0].splitlines()
            if line.startswith("| faiss-ivfopq") or line.startswith("| jpq-ivf")]
    assert [r[0][2:] for r in rows if r[1].startswith("faiss init")] == ["faiss-ivfopq"]    # counted where it ran
    assert any(r[0] == "| jpq-ivf" and r[1].startswith("teacher top-K / negative pool") for r in rows)
    assert os.environ.get("VQBENCH_MSMARCO") == env_before                                # restored
    jpq = next(r for r in first if r["method"] == "jpq-ivf")
    section = text.split("· jpq-ivf ·")[1]
    assert f"| faiss init (OPQ, IVF lists, PQ; in fit) \\* | {jpq['stages']['init']['seconds']:,.1f} |" in section
    assert f"| exact reference top-k of the eval queries \\* | {jpq['stages']['exact']['seconds']:,.1f} |" in section
    assert f"nDCG@10 {jpq['metrics']['nDCG@10']:.4f}" in section
    assert (tmp_path / "rep" / "growth.png").stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "rep" / "runs").iterdir()) == ["n2000-faiss-ivfopq.json",
                                                                            "n2000-jpq-ivf.json"]


def test_paper_shape_is_the_msmarco_config():
    """bench/scale.py --paper runs configs/msmarco.toml's setting (IVF lists and their training sample, PQ bytes,
    two-level lists, flat-index assignment, jpq-ivf's mining lists and lr, the pruned nprobe), so that config's
    --dry-run is checked against it."""
    import tomllib
    scale = _scale()
    args = scale.parse_args(["--paper"])
    cfg = tomllib.loads((SCALE.parent.parent / "configs" / "msmarco.toml").read_text())
    runs = {m: r["params"] for r in cfg["runs"] for m in r["methods"]}
    assert set(args.method_list) <= set(runs)
    for method in args.method_list:
        p = runs[method]
        assert args.nlist == p["nlist"] == 10000 and args.M in p["M"]
        assert args.coarse == p["coarse"] and args.pq_assign == p["pq_assign"]
        assert scale.train_points_for(8_841_823, args.nlist) == p["max_train_points"] == 39 * 10000   # faiss's 39/list
    assert args.nlist // 16 == runs["jpq-ivf"]["mine_nprobe"] and args.nlist // 16 in cfg["search"]["nprobes"]
    assert args.teacher_scores == runs["distill-vq"]["teacher_scores"] == "one-pass"
    assert args.lr == runs["jpq-ivf"]["lr"] == 1e-4 and args.pool_refresh == runs["jpq-ivf"].get("pool_refresh", 0)
    assert args.teacher == cfg["datasets"]["msmarco"]["teacher"] and args.test_queries == 6980
    assert scale.parse_args(["--paper", "--nlist", "4096"]).nlist == 4096     # explicit flags win
