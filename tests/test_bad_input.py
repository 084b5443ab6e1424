"""Bad input as a new user would type it (issue #14's table, the command-line / config / runner rows): each case is
one clear error line naming the flag, file or key and what is expected, exit 2, before any work (nothing written,
nothing trained); a run in which a fit failed exits 1 with a summary.

The CLI is called in-process (``benchmark.cli.main``); the interruption rows live in ``tests/test_resume.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark import cli
from benchmark.config import plan
from benchmark.registry import BaseMethod, MethodError, TrainData, register

CONFIG_TYPO = '[[runs]]\nmethod = ["faiss-pq"]\n'
CONFIG_STRING = '[[runs]]\nmethods = "faiss-pq"\n'
CONFIG_BAD_KEYS = 'seed = 2\n[search]\nnprobe = [1]\n[[runs]]\nmethods = ["faiss-pq"]\nparams = { M = "x" }\n'
CONFIG_SEEDS = 'seeds = 0\n[search]\nnprobes = [0, 4]\n[[runs]]\nmethods = ["faiss-pq"]\nseeds = -1\n'
CONFIG_DATASET = ('[datasets.mine]\nname = "npy:/no/such/folder"\nhint = "build it first"\n'
                  '[[runs]]\nmethods = ["flat"]\n')
CONFIG_OPTION = ('[datasets.mine]\nname = "synthetic:quick"\nnum_tset = 50\n[[runs]]\nmethods = ["flat"]\n')
CONFIG_TOML = '[[runs]\nmethods = ["flat"]\n'


@register
class AlwaysFails(BaseMethod):
    """A plug-in whose fit raises (what a method bug looks like to the runner)."""

    name = "test-fails"
    family = "reconstruction"
    params: dict = {}

    def fit(self, train: TrainData):
        raise MethodError("this method always fails")


def tiny_npy(folder: Path, docs: int = 6, dim: int = 8) -> Path:
    """An npy dataset with ``docs`` documents and 3 test queries."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "corpus.npy", rng.standard_normal((docs, dim)).astype(np.float32))
    (folder / "corpus_ids.txt").write_text("".join(f"d{i}\n" for i in range(docs)))
    np.save(folder / "queries.npy", rng.standard_normal((3, dim)).astype(np.float32))
    (folder / "queries_ids.txt").write_text("q0\nq1\nq2\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td2\t1\n")
    return folder


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (case id, argv (with {tmp} for the test's folder), files to create {name: text}, expected stderr lines)
CASES = [
    ("param-nlist-0", ["--methods", "faiss-ivfpq", "--param", "nlist=0", "--quick"], {},
     ["error: --param nlist=0: faiss-ivfpq: nlist=0: expected int >= 1"]),
    ("param-M-abc", ["--methods", "faiss-pq", "--param", "M=abc"], {},
     ["error: --param M=abc: faiss-pq: M='abc': expected int >= 1"]),
    ("param-M-0", ["--methods", "faiss-pq", "--param", "M=0"], {},
     ["error: --param M=0: faiss-pq: M=0: expected int >= 1"]),
    ("param-M-neg", ["--methods", "faiss-pq", "--param", "M=-4"], {},
     ["error: --param M=-4: faiss-pq: M=-4: expected int >= 1"]),
    ("param-no-equals", ["--methods", "faiss-pq", "--param", "M"], {},
     ["error: --param 'M': expected KEY=VALUE, e.g. --param M=32"]),
    ("param-undeclared", ["--methods", "faiss-pq", "--param", "bogus=1"], {},
     ["error: --param ['bogus']: no selected method declares it; params of the selected methods: "
      "['M', 'max_train_points', 'pq_assign']"]),
    ("nprobes-0", ["--nprobes", "0", "--quick"], {},
     ["error: --nprobes: expected comma-separated integers >= 1 (e.g. 1,4,16), got '0'"]),
    ("nprobes-abc", ["--nprobes", "abc", "--quick"], {},
     ["error: --nprobes: expected comma-separated integers >= 1 (e.g. 1,4,16), got 'abc'"]),
    ("seeds-0", ["--seeds", "0", "--quick"], {}, ["error: --seeds: expected a number of seeds >= 1, got '0'"]),
    ("seeds-neg", ["--seeds", "-1", "--quick"], {}, ["error: --seeds: expected a number of seeds >= 1, got '-1'"]),
    ("method-typo", ["--methods", "faiss-ivpq"], {},
     ["error: --methods: unknown method 'faiss-ivpq' (did you mean 'faiss-ivfpq'"]),
    ("dataset-unknown", ["--datasets", "wat"], {}, ["error: --datasets: unknown dataset 'wat'"]),
    ("config-missing", ["--config", "{tmp}/nope.toml"], {}, ["error: --config: {tmp}/nope.toml does not exist"]),
    ("config-bad-toml", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_TOML}, ["error: {tmp}/c.toml: invalid TOML: "]),
    ("config-method-typo", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_TYPO},
     ["error: {tmp}/c.toml: [[runs]] #1: unknown key 'method' (did you mean 'methods'?); valid keys: "
      "['methods', 'params', 'seeds', 'tuning', 'tuned', 'datasets']",
      "error: {tmp}/c.toml: [[runs]] #1: needs methods = [\"<method>\", ...]"]),
    ("config-methods-string", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_STRING},
     ["error: {tmp}/c.toml: [[runs]] #1 methods: expected a list of method names like [\"faiss-pq\"], "
      "got 'faiss-pq'"]),
    ("config-keys-and-types", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_BAD_KEYS},
     ["error: {tmp}/c.toml: unknown key 'seed' (did you mean 'seeds'?); valid keys: ",
      "error: {tmp}/c.toml [search]: unknown key 'nprobe' (did you mean 'nprobes'?); valid keys: ",
      "error: {tmp}/c.toml: [[runs]] #1 params.M: faiss-pq: M='x': expected int >= 1"]),
    ("config-seeds-nprobes", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_SEEDS},
     ["error: {tmp}/c.toml seeds: expected a number of seeds >= 1, got 0",
      "error: {tmp}/c.toml [search].nprobes: expected a non-empty list of integers >= 1 (nprobe values), "
      "got [0, 4]",
      "error: {tmp}/c.toml: [[runs]] #1 seeds: expected a number of seeds >= 1, got -1"]),
    ("config-dataset-folder", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_DATASET},
     ["error: {tmp}/c.toml: dataset 'mine': npy dataset folder /no/such/folder does not exist"]),
    ("config-dataset-option", ["--config", "{tmp}/c.toml"], {"c.toml": CONFIG_OPTION},
     ["error: {tmp}/c.toml: dataset 'mine': unknown option 'num_tset' (did you mean 'num_test'"]),
    ("npy-folder-missing", ["--datasets", "npy:{tmp}/nope", "--methods", "flat"], {},
     ["error: --datasets: dataset 'npy:{tmp}/nope': npy dataset folder {tmp}/nope does not exist"]),
    ("out-is-a-file", ["--quick", "--out", "{tmp}/file"], {"file": "x"},
     ["error: --out: {tmp}/file is a file; expected a folder (it is created if missing)"]),
    ("out-under-a-file", ["--quick", "--out", "{tmp}/file/sub"], {"file": "x"},
     ["error: --out: {tmp}/file is a file, so {tmp}/file/sub cannot be created"]),
    ("report-only-missing", ["--report-only", "{tmp}/none"], {}, ["error: --report-only: {tmp}/none does not exist"]),
    ("report-only-empty", ["--report-only", "{tmp}"], {}, ["error: --report-only: {tmp} holds no results.jsonl"]),
    ("merge-missing-shard", ["--merge", "{tmp}/a", "{tmp}/no_such_shard", "--out", "{tmp}/m"],
     {"a/results.jsonl": ""}, ["error: --merge: {tmp}/no_such_shard does not exist"]),
    ("shard", ["--quick", "--shard", "2/2"], {}, ["error: --shard must be i/n with 0 <= i < n (0-based"]),
    ("threads", ["--quick", "--threads", "-1"], {}, ["error: --threads: expected an integer >= 0, got -1"]),
    ("device-unknown", ["--quick", "--device", "tpu"], {},
     ["error: --device: unknown torch device 'tpu': use cpu or cuda[:N]"]),
    ("device-unsupported", ["--quick", "--device", "mps"], {},
     ["error: --device: device 'mps' is not supported: use cpu or cuda[:N]"]),
    ("dataset-opt-typo", ["--quick", "--dataset-opt", "num_tset=5"], {},
     ["error: --dataset-opt 'num_tset=5': dataset 'synthetic:quick' has no option 'num_tset' (did you mean "
      "'num_test'"]),
    ("dataset-opt-no-equals", ["--quick", "--dataset-opt", "split"], {},
     ["error: --dataset-opt 'split': expected KEY=VALUE"]),
    ("dataset-opt-dev", ["--quick", "--dataset-opt", "dev_queries=-3"], {},
     ["error: --dataset-opt: dataset 'synthetic:quick' option dev_queries: expected int >= 0, got -3"]),
    # a method's own config rules (combinations of params) are checked when the grid is planned, before any data
    ("distill-candidates-ib-only", ["--quick", "--methods", "distill-vq", "--param", "candidates=ib"], {},
     ["error: distill-vq(candidates=ib,epochs=0.5,nlist=32,opq_niter=5): candidates='ib': candidates need a source "
      "besides 'ib'"]),
    ("distill-nothing-to-train", ["--quick", "--methods", "distill-vq", "--param", "train_ivf=false",
                                  "--param", "train_pq=false"], {},
     ["error: distill-vq(epochs=0.5,nlist=32,opq_niter=5,train_ivf=False,train_pq=False): train_ivf and train_pq "
      "are both False: nothing to train"]),
    ("jpq-pool-below-top-k", ["--quick", "--methods", "jpq", "--param", "pool_size=100"], {},
     ["error: jpq(epochs=0.5,opq_niter=5,pool_size=100): pool_size must be >= top_k (200), got 100"]),
    ("many-problems-at-once", ["--methods", "faiss-pq,nope", "--seeds", "0", "--nprobes", "x"], {},
     ["error: --seeds: expected", "error: --nprobes: expected", "error: --methods: unknown method 'nope'"]),
]


@pytest.mark.parametrize("case, argv, files, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_each_and_exit_2_before_any_work(tmp_path, capsys, monkeypatch, case, argv,
                                                                     files, expected):
    import benchmark.runner as runner
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if not any(a in argv for a in ("--out", "--report-only")):
        argv += ["--out", str(tmp_path / "out")]
    code, out, err = run(capsys, *argv)
    lines = err.splitlines()
    assert code == 2, err
    for want in expected:
        want = want.replace("{tmp}", str(tmp_path))
        assert any(line.startswith(want) for line in lines), f"{want!r} not in {lines}"
    assert all(line.startswith("error: ") for line in lines), lines
    assert len(lines) == len(expected), lines  # one line per problem, no traceback, no noise
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_too_small_corpus_is_one_clear_error_after_loading_before_training(tmp_path, capsys, monkeypatch):
    import benchmark.runner as runner
    monkeypatch.setattr(runner, "execute_fit", lambda *a, **k: pytest.fail("a fit started"))
    data = tiny_npy(tmp_path / "six")
    code, _, err = run(capsys, "--datasets", f"npy:{data}", "--methods", "faiss-pq,faiss-ivfpq", "--param", "M=4",
                       "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2
    assert lines == [
        f"error: npy:{data} faiss-pq(M=4) seed=0: 8-bit PQ trains 256 codewords per sub-quantizer by k-means and "
        f"needs >= 256 training points; this corpus gives 6 (6 docs)",
        f"error: npy:{data} faiss-ivfpq(M=4) seed=0: 8-bit PQ trains 256 codewords per sub-quantizer by k-means "
        f"and needs >= 256 training points; this corpus gives 6 (6 docs)",
        f"error: npy:{data} faiss-ivfpq(M=4) seed=0: nlist=256 must be in [1, 6] (IVF k-means needs >= nlist "
        f"training points; this corpus gives 6)"]
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_M_not_dividing_the_dim_is_found_before_training(tmp_path, capsys, monkeypatch):
    import benchmark.runner as runner
    monkeypatch.setattr(runner, "execute_fit", lambda *a, **k: pytest.fail("a fit started"))
    code, _, err = run(capsys, "--quick", "--methods", "faiss-opq", "--param", "M=5", "--out", str(tmp_path))
    assert code == 2
    assert ("error: synthetic:quick faiss-opq(M=5,opq_niter=5) seed=0: M=5 must be a positive divisor of the "
            "embedding dim 64") in err


def test_failed_fits_exit_1_with_a_summary_and_keep_their_records(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "cache"))
    code, out, err = run(capsys, "--quick", "--methods", "test-fails,flat", "--out", str(tmp_path))
    assert code == 1
    assert "1 fit(s) failed (errors recorded in" in err
    assert "  synthetic:quick test-fails seed=0: MethodError: this method always fails" in err.splitlines()
    assert "report:" in out  # the report is still written, from what succeeded
    from benchmark.records import read_records
    records, _ = read_records(tmp_path / "results.jsonl", strict=True)
    assert sorted((r["method"], r["status"]) for r in records) == [("flat", "ok"), ("test-fails", "failed")]
    code, out, err = run(capsys, "--quick", "--methods", "flat", "--out", str(tmp_path))
    assert code == 0 and "skip (recorded): synthetic:quick flat seed=0" in out + err


def test_every_fit_failed_is_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "cache"))
    code, _, err = run(capsys, "--quick", "--methods", "test-fails", "--seeds", "2", "--out", str(tmp_path))
    assert code == 1 and "2 fit(s) failed" in err


def test_the_grid_is_checked_against_the_data_before_any_fit(tmp_path, capsys, monkeypatch):
    """Rules that need the data (labels, dim, size, the nprobe sweep against the planned nlists): exit 2 after
    loading, before any training, every problem listed."""
    import benchmark.runner as runner
    monkeypatch.setattr(runner, "execute_fit", lambda *a, **k: pytest.fail("a fit started"))
    data = tiny_npy(tmp_path / "d", docs=300, dim=12)        # no train qrels; 12 is not a multiple of 8
    code, _, err = run(capsys, "--datasets", f"npy:{data}", "--methods", "jpq,distill-vq-labeled,infonce-pq,"
                       "binary-sign,faiss-pq", "--param", "M=4", "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2
    no_labels = ("needs labeled train queries (a train split with qrels), but this dataset has none; use a method "
                 "or setting that trains without labels")
    assert lines == [f"error: npy:{data} jpq(M=4) seed=0: {no_labels}",
                     f"error: npy:{data} distill-vq-labeled(M=4) seed=0: {no_labels}",
                     f"error: npy:{data} infonce-pq(M=4) seed=0: {no_labels}",
                     f"error: npy:{data} binary-sign seed=0: the embedding dim 12 must be a multiple of 8 (8 sign "
                     f"bits per byte)"]
    code, _, err = run(capsys, "--datasets", f"npy:{data}", "--methods", "distill-vq", "--param", "M=4",
                       "--param", "nlist=8", "--out", str(tmp_path / "out"))
    assert code == 2 and (f"error: npy:{data} distill-vq(M=4,nlist=8) seed=0: queries='unlabeled' needs train or "
                          f"train-unlabeled queries, but this dataset has none; use queries='docs'") in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_an_nprobe_no_planned_fit_can_use_is_an_error_and_a_clamped_one_is_printed(tmp_path, capsys, monkeypatch):
    import benchmark.runner as runner
    monkeypatch.setattr(runner, "execute_fit", lambda *a, **k: pytest.fail("a fit started"))
    code, _, err = run(capsys, "--quick", "--methods", "faiss-ivfpq,faiss-pq", "--nprobes", "4,64,128",
                       "--out", str(tmp_path / "out"))
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: nprobes: [64, 128] exceed the nlist of every planned IVF fit (largest nlist 32); nprobe can be at "
        "most nlist"]
    config = tmp_path / "c.toml"
    config.write_text('[search]\nnprobes = [4, 64]\n[[runs]]\nmethods = ["faiss-ivfpq"]\n'
                      'params = { nlist = [16, 64], M = 8 }\n')
    logged: list[str] = []
    planned = plan(config=str(config), datasets="synthetic:quick")
    r = runner.Runner(tmp_path / "o2", planned.settings(), datasets=planned.datasets, log=logged.append)
    r.check(planned.jobs, r.load(["synthetic:quick"]))
    assert "adjusted: synthetic:quick faiss-ivfpq(M=8,nlist=16) seed=0: nprobes [64] > nlist 16, evaluated at " \
           "nprobe 16" in logged
    assert not any("nlist=64" in line for line in logged if line.startswith("adjusted"))


def test_the_runner_builds_each_jobs_method_once(tmp_path, monkeypatch):
    """The method a job is checked with is the one its fit runs (and its fit id is looked up with)."""
    import benchmark.runner as runner
    from benchmark.registry import make_method
    built: list[str] = []
    monkeypatch.setattr(runner, "make_method",
                        lambda name, params=None: built.append(name) or make_method(name, params))
    planned = plan(methods="flat,faiss-pq", quick=True, seeds="2")
    r = runner.Runner(tmp_path, planned.settings(), datasets=planned.datasets, cache_dir=tmp_path / "cache")
    r.run(planned.jobs)
    assert r.summary.ok and sorted(built) == ["faiss-pq", "faiss-pq", "flat", "flat"]
    r.run(planned.jobs)          # resumed: built again for the check and the fit-id lookup, nothing fitted
    assert len(built) == 8 and len(r.summary.skipped) == 4
