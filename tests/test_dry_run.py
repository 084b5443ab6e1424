"""run_benchmark.py --dry-run (benchmark.estimate): the plan and each stage's estimate from the datasets' sizes alone
(npy headers, qrels, the catalog), before any work: no dataset is loaded, nothing is trained or written."""
from __future__ import annotations

import numpy as np
import pytest

import benchmark.runner  # noqa: F401  (imported before a test patches benchmark.data.load_dataset: it binds it)
from benchmark.cli import main
from benchmark.estimate import Facts, Rates, dataset_facts, fit_stages
from benchmark.registry import make_method


@pytest.fixture()
def npy_dir(tmp_path):
    folder = tmp_path / "mine"
    (folder / "qrels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "corpus.npy", rng.standard_normal((3000, 32)).astype(np.float32))
    np.save(folder / "queries.npy", rng.standard_normal((700, 32)).astype(np.float32))
    (folder / "corpus_ids.txt").write_text("".join(f"d{i}\n" for i in range(3000)))
    (folder / "queries_ids.txt").write_text("".join(f"q{i}\n" for i in range(700)))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                                "".join(f"q{i}\td{i}\t1\n" for i in range(500)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"q{i}\td{i}\t1\nq{i}\td{i + 1}\t1\n" for i in range(500, 700)))
    return folder


def test_dry_run_prints_the_plan_and_loads_nothing(npy_dir, tmp_path, capsys, monkeypatch):
    import benchmark.data as data
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("a dry run loaded a dataset"))
    out = tmp_path / "out"
    assert main(["--datasets", f"npy:{npy_dir}", "--methods", "distill-vq,faiss-ivfopq,jpq", "--param", "nlist=16",
                 "--param", "M=8", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dry run: 3 fit(s)" in text and "nothing is loaded, trained or written" in text
    assert "3,000 docs x 32-d, 500 train queries, 200 evaluated queries" in text
    assert "teacher top-50 (exact)" in text and "faiss init (OPQ8,IVF16,PQ8x8)" in text
    assert "negatives (pool: PQ scans of every doc)" in text and "GPU" in text and "total:" in text
    assert not out.exists()


def test_stage_counts_follow_the_sizes():
    """Operation counts, not fitted numbers: the exact teacher's work is queries x docs x dim x 2, the ivf teacher
    scans nprobe / nlist of it, and a bigger corpus costs proportionally more."""
    small, big = Facts(100_000, 768, 500_000, 1000, False, None, "t"), Facts(1_000_000, 768, 500_000, 1000, False,
                                                                              None, "t")
    method = make_method("distill-vq", {"M": 32, "nlist": 1024})
    teacher = {s.name: s for s in fit_stages(method, big, [1, 64, 1024])}["teacher top-50 (exact)"]
    assert teacher.flops == 500_000 * 1_000_000 * 768 * 2
    ivf = [s for s in fit_stages(method, big, [1024], teacher={"kind": "ivf"}) if s.name.startswith("teacher")][0]
    assert "IVF4096,SQ8, nprobe 256: calibrated; assumed nlist/16" in ivf.name and ivf.flops < teacher.flops / 50
    # the SQ8 codes (d bytes per doc) of 256 lists, at the scalar quantizer's own scan rate, not the PQ scan's
    assert ivf.sq8_scan == 500_000 * 256 / 4096 * 1_000_000 * 768 and ivf.scan == 0
    assert ivf.seconds(Rates(1e11, 1e9, 5e10, 1e10, 1e8, 4e9, 1e8), 0) == pytest.approx(ivf.flops / 1e11
                                                                                   + ivf.sq8_scan / 4e9)
    given = [s for s in fit_stages(method, big, [1024], teacher={"kind": "ivf", "nprobe": 64})
             if s.name.startswith("teacher")][0]
    assert "nprobe 64: given" in given.name and given.sq8_scan == ivf.sq8_scan / 4
    # the index build: trained codes are written as they are; fixed codebooks under moved centroids re-encode
    build = lambda m: next(s for s in fit_stages(make_method(m, {"M": 32, "nlist": 1024}), big, [1024])  # noqa: E731
                           if s.name.startswith("index build"))
    assert build("distill-vq").flops == 0 and build("distill-vq").name == "index build (the trained codes)"
    ivf_only = build("distill-vq-ivf-only")
    assert ivf_only.flops == 1_000_000 * 768 * 768 * 2 and ivf_only.pq_encode == 1_000_000 * 256 * 768 * 2
    # the faiss init: sub-quantizer work (OPQ's k-means and encodings, every doc's codes) counted apart from the big
    # products, each at its own measured rate
    init = next(s for s in fit_stages(make_method("distill-vq", {"M": 48, "nlist": 4096, "coarse": "two-level"}),
                                      big, [4096]) if s.name.startswith("faiss init"))
    opq_pass = 65536 * 256 * 768 * 2
    assert init.pq_encode == 20 * opq_pass + 1_000_000 * 256 * 768 * 2
    assert init.pq_train == (20 * 4 + 36) * opq_pass + 65536 * 256 * 768 * 2 * 25
    assert init.seconds(Rates(1e11, 1e9, 5e10, 1e10, 1e8, 4e9, 1e8), 0) == pytest.approx(
        init.flops / 1e11 + init.pq_train / 5e10 + init.pq_encode / 1e10)
    exact = lambda f: next(s for s in fit_stages(method, f, [1024]) if s.name.startswith("exact"))  # noqa: E731
    assert exact(big).flops == 10 * exact(small).flops
    # JPQ's pool: a PQ scan of every doc per train query, or of mine_nprobe / nlist of them
    neg = lambda p: next(s for s in fit_stages(make_method("jpq-ivf", p), big, [1024])  # noqa: E731
                         if s.name.startswith("negatives"))
    every, pruned = neg({"M": 32, "nlist": 1024}), neg({"M": 32, "nlist": 1024, "mine_nprobe": 64})
    assert every.scan == 500_000 * 1_000_000 * 32 and pruned.scan == every.scan / 16
    assert "64 of 1024 lists probed" in pruned.name and "every doc" in every.name


def test_catalog_sizes_for_a_dataset_not_downloaded():
    f = dataset_facts("msmarco", {"model": "mpnet"})
    assert (f.docs, f.dim, f.train_queries, f.eval_queries, f.texts) == (8_841_823, 768, 502_939, 6_980, True)
    assert f.split == "dev"      # the catalog's eval split: what the records' fit ids name


def test_training_counts_the_ivf_table_and_the_optimiser():
    """A step's work: per query its candidates' scores, the PQ lookup tables and the score table of every IVF
    centroid (4 passes); per step AdamW over the trained tensors (codebooks 256 x d, centroids nlist x d) and a fixed
    cost. At MS MARCO's IVF10000 the centroids are most of it (issue #29: jpq-ivf's 3,125 steps of 32 took 188 s
    measured, the previous fixed 0.13 s a step estimated 406)."""
    facts = Facts(8_841_823, 768, 100_000, 6980, False, None, "t")
    jpq = make_method("jpq-ivf", {"M": 32, "nlist": 10000})
    train = next(s for s in fit_stages(jpq, facts, [625]) if s.name.startswith("training"))
    assert train.steps == 3125 and train.updates == 3125 * (256 * 768 + 10000 * 768)
    per_query = (200 + 32 + 2) * 768 * 2 * 3 + 256 * 768 * 2 * 3 + 10000 * 768 * 2 * 4
    assert train.flops == 100_000 * per_query
    rates = Rates(1e11, 1e9, 5e10, 1e10, 1e8, 4e9, 1e8)
    assert train.seconds(rates, 0.004) == pytest.approx(train.flops / 1e11 + train.updates / 1e8 + 3125 * 0.004)
    flat = next(s for s in fit_stages(make_method("jpq", {"M": 32}), facts, []) if s.name.startswith("training"))
    assert flat.updates == 3125 * 256 * 768 and flat.flops < train.flops / 10
    fixed = make_method("distill-vq", {"M": 32, "nlist": 10000, "train_ivf": False})
    distill = next(s for s in fit_stages(fixed, facts, [625]) if s.name.startswith("training"))
    assert distill.updates == distill.steps * (256 * 768 + 768 * 768)   # codebooks and its query adapter, no lists
    adapter = make_method("distill-vq", {"M": 32, "nlist": 10000, "train_ivf": False, "query_adapter": False})
    assert next(s for s in fit_stages(adapter, facts, [625]) if s.name.startswith("training")).flops == pytest.approx(
        distill.flops - 2 * 100_000 * 768 * 768 * 2 * 3)                  # 2 epochs of the adapter's products


def test_totals_count_cached_stages_once_and_skip_recorded_fits(npy_dir, tmp_path, capsys, monkeypatch):
    """Each stage priced at 100 s: distill-vq x 3 seeds = 3 seeds x (training, index build, evaluation) + the faiss
    init once per seed + the teacher's top-K and the exact reference once: 1,400 s, not 3 x 6 stages = 1,800 s.
    A fit already recorded in the output folder is resumed, so it is not counted."""
    import benchmark.estimate as est
    monkeypatch.setattr(est.Stage, "seconds", lambda self, rates, step: 100.0)
    monkeypatch.setattr(est, "measure_machine", lambda cache: est.Machine(2, 8 * est.GiB, 100 * est.GiB, 1e11, 1e10,
                                                                           "none", 5e10, 1e10, 4e9, 1e8))
    args = ["--datasets", f"npy:{npy_dir}", "--methods", "distill-vq", "--param", "nlist=16", "--param", "M=8",
            "--param", "epochs=0.2", "--param", "opq_niter=2", "--nprobes", "16", "--out", str(tmp_path / "out")]
    assert main([*args, "--seeds", "3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "total: 1,400 s on this machine" in text and "recorded there" not in text
    assert "(cached: once per seed)" in text and "(cached: once per dataset)" in text
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "cache"))
    assert main([*args, "--seeds", "1", "--threads", "1"]) == 0         # seed 0 fitted and recorded
    capsys.readouterr()
    assert main([*args, "--seeds", "3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    # seeds 1 and 2 left: 2 x 3 stages + 2 inits + the teacher and the exact reference (this run computes them again)
    assert "dry run: 3 fit(s)" in text and "(1 recorded there: resumed" in text and "2 to run" in text
    assert "total: 1,000 s on this machine" in text
