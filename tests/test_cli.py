"""End to end: run_benchmark.py --quick, resume, --save-index, sharding, plug-in methods (bad input: test_bad_input)."""
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from benchmark import registry
from benchmark.data import load_dataset
from benchmark.harness import ExactReference, SearchSettings, evaluate
from benchmark.records import read_records, read_sidecar, validate_record
from benchmark.registry import BaseMethod, TrainData, register
from benchmark.runner import Job, Runner
from benchmark.vq import VQParams, encode_pq

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    proc = run_cli("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_quick_run_writes_schema_valid_records_for_every_method(quick_run):
    out, proc = quick_run
    records, problems = read_records(out / "results.jsonl", strict=True)
    assert not problems
    for rec in records:
        validate_record(rec)
        assert rec["status"] == "ok", rec.get("error")
        sidecar = read_sidecar(out / rec["per_query"])
        assert set(sidecar) >= {"nDCG@10", "RR@10", "overlap@10"}
        assert np.mean(list(sidecar["RR@10"].values())) == pytest.approx(rec["metrics"]["RR@10"])
    assert {r["method"] for r in records} == {m for m in registry.available() if not m.startswith("test-")}
    flat = [r for r in records if r["method"] == "flat"]
    assert len(flat) == 1 and flat[0]["fidelity"] == {"overlap@10": 1.0, "overlap@100": 1.0}
    ivf = sorted(r["nprobe"] for r in records if r["method"] == "faiss-ivfpq")
    assert ivf == [1, 2, 4, 8, 16, 32]
    assert "report:" in proc.stdout and (out / "leaderboard.md").exists()


def test_rerun_resumes_without_refitting(quick_run):
    out, _ = quick_run
    before = (out / "results.jsonl").read_text()
    proc = run_cli("--quick", "--out", str(out), "--methods", "flat,faiss-pq")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("skip (recorded)") == 2
    assert (out / "results.jsonl").read_text() == before


def test_saved_index_reproduces_recorded_metrics(tmp_path):
    proc = run_cli("--quick", "--out", str(tmp_path), "--methods", "faiss-ivfopq", "--nprobes", "4,32",
                   "--save-index")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records, _ = read_records(tmp_path / "results.jsonl")
    ds = load_dataset("synthetic:quick")
    split = ds.split("test")
    exact = ExactReference().top_k(ds, split, 100)
    for rec in records:
        index = faiss.read_index(str(tmp_path / rec["index"]["path"]))
        ev = evaluate(index, ds, split, exact, SearchSettings(latency_queries=2, warmup_queries=0), rec["nprobe"])
        assert ev.metrics == pytest.approx(rec["metrics"], abs=1e-9)
        assert ev.fidelity == pytest.approx(rec["fidelity"], abs=1e-9)


def test_shards_merged_equal_one_unsharded_run(tmp_path):
    args = ["--quick", "--methods", "flat,faiss-pq,faiss-ivfpq", "--seeds", "2", "--nprobes", "2,8"]
    for shard in ("0/2", "1/2"):
        assert run_cli(*args, "--out", str(tmp_path / shard[0]), "--shard", shard).returncode == 0
    assert run_cli("--merge", str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(tmp_path / "m")).returncode == 0
    assert run_cli(*args, "--out", str(tmp_path / "all")).returncode == 0

    def table(folder):
        records, _ = read_records(tmp_path / folder / "results.jsonl", strict=True)
        return {r["run_id"]: (r["metrics"], r["fidelity"]) for r in records}
    merged, whole = table("m"), table("all")
    assert len(whole) == 2 * (1 + 1 + 2) and merged == whole


@register
class RandomCodebookPQ(BaseMethod):
    """A toy plug-in: PQ codebooks are random docs' sub-vectors (no training at all)."""

    name = "test-random-pq"
    family = "reconstruction"
    params = {"M": 8}

    def fit(self, train: TrainData) -> VQParams:
        rng = np.random.default_rng(train.seed)
        M, d = self.config["M"], train.dim
        picks = np.asarray(train.doc_emb[rng.choice(train.num_docs, 256, replace=False)])
        codebooks = picks.reshape(256, M, d // M).transpose(1, 0, 2).copy()
        return VQParams(pq_codebooks=codebooks, doc_codes=encode_pq(codebooks, train.doc_emb), writeback="codes")


def test_toy_plugin_runs_through_the_whole_pipeline(tmp_path):
    records = Runner(tmp_path, SearchSettings(latency_queries=5, warmup_queries=1), cache_dir=None).run(
        [Job("synthetic:quick", "test-random-pq", {"M": 8}, 0), Job("synthetic:quick", "flat", {}, 0)])
    toy, flat = records
    assert toy["status"] == "ok" and toy["index"]["factory"] == "PQ8x8" and toy["index"]["bytes_per_vector"] == 8
    assert 0.05 < toy["metrics"]["nDCG@10"] < flat["metrics"]["nDCG@10"]


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    (tmp_path / "toyplug.py").write_text(
        "from benchmark.registry import BaseMethod\n"
        "class Toy(BaseMethod):\n    name = 'ep-toy'\n    family = 'reconstruction'\n    params = {}\n")
    dist = tmp_path / "toyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vqbench.methods]\ntoy = toyplug:Toy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "ep-toy" in registry.available()


def test_unknown_method_param_lists_valid_params():
    with pytest.raises(registry.MethodError, match=r"unknown param\(s\) \['m'\]; valid params: \['M'"):
        registry.make_method("faiss-pq", {"m": 4})


def test_list_methods_prints_descriptions_and_typed_params(capsys):
    from benchmark import cli
    assert cli.main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "faiss-ivfpq  [reconstruction]  Spherical k-means IVF + residual PQ, ``IVF{nlist},PQ{M}x8``." in out
    block = out.split("faiss-ivfpq  [reconstruction]", 1)[1].split("\n\n")[0].splitlines()
    assert "    nlist=256  (int >= 1)  IVF lists (coarse k-means centroids); needs >= nlist training points" in block
    assert "    M=16  (int >= 1)  PQ sub-quantizers = bytes per vector (8-bit codes); must divide the embedding dim" \
           in block
    assert "flat  [reference]" in out and "    (no params)" in out


def test_dataset_options_reach_the_loader_of_every_selected_dataset():
    from benchmark.config import plan
    p = plan(datasets="synthetic:quick", methods="flat", dataset_opts=["num_test=50", "dev_queries=20"])
    assert p.datasets == {"synthetic:quick": ("synthetic:quick", {"num_test": 50, "dev_queries": 20})}


def test_merge_with_rename_brings_another_configs_fits_under_this_configs_alias(tmp_path, capsys):
    """``--merge DIR --rename old=new --config C``: the same fits of the same data, run under alias ``old`` by one
    config, become C's fits of ``new`` (ids as a run of C computes them, sidecars and saved indexes copied under them):
    a run of C then resumes them and fits only what C plans beyond them; fits C does not plan are left behind. A
    source whose records name another encoder than C declares is refused before anything is written."""
    from test_bad_input import tiny_npy
    from benchmark import cli
    folder = tiny_npy(tmp_path / "d", docs=300, dim=384)
    src, dest = tmp_path / "src", tmp_path / "dest"

    def config(name: str, alias: str, out: Path, encoder: str | None, runs: str) -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'out = "{out}"\n[datasets."{alias}"]\nname = "npy:{folder}"\n'
                        + (f'encoder = "{encoder}"\n' if encoder else "") + runs)
        return str(path)

    a = config("a", "coll", src, None, '[[runs]]\nmethods = ["flat", "faiss-ivfpq"]\nparams = { M = 8, nlist = 4 }\n'
               '[[runs]]\nmethods = ["faiss-pq"]\nparams = { M = 16 }\n')
    b = config("b", "coll/minilm", dest, "minilm",
               '[[runs]]\nmethods = ["flat", "faiss-ivfpq", "faiss-pq"]\nparams = { M = 8, nlist = 4 }\n')
    assert cli.main(["--config", a, "--save-index"]) == 0
    capsys.readouterr()
    assert cli.main(["--merge", str(src), "--out", str(dest), "--rename", "coll=coll/minilm", "--config", b]) == 2
    assert "names encoder None, the config declares 'sentence-transformers/all-MiniLM-L6-v2'" in capsys.readouterr().err
    assert not (dest / "results.jsonl").exists()
    assert cli.main(["--merge", str(src), "--out", str(dest), "--rename", "col=coll/minilm", "--config", b]) == 2
    assert "no record of dataset 'col'" in capsys.readouterr().err
    assert cli.main(["--merge", str(src), "--out", str(dest), "--rename", "coll=coll/minilm"]) == 2
    assert "--rename: needs --config" in capsys.readouterr().err

    assert cli.main(["--stamp-encoders", str(src), "--config", config("a2", "coll", src, "minilm", "")]) == 0
    assert cli.main(["--merge", str(src), "--out", str(dest), "--rename", "coll=coll/minilm", "--config", b]) == 0
    source = {r["run_id"]: r for r in read_records(src / "results.jsonl")[0]}
    merged = read_records(dest / "results.jsonl")[0]
    assert sorted(r["method"] for r in source.values()) == ["faiss-ivfpq"] * 3 + ["faiss-pq", "flat"]
    assert sorted(r["method"] for r in merged) == ["faiss-ivfpq"] * 3 + ["flat"]   # faiss-pq M=16: not planned by b
    for rec in merged:
        old = source[rec["provenance"]["merged_from"]["run_id"]]
        assert rec["dataset"] == "coll/minilm" and rec["run_id"] != old["run_id"]
        assert rec["metrics"] == old["metrics"] and rec["params"] == old["params"]
        assert read_sidecar(dest / rec["per_query"]) == read_sidecar(src / old["per_query"])
        assert (dest / rec["index"]["path"]).read_bytes() == (src / old["index"]["path"]).read_bytes()
    capsys.readouterr()
    assert cli.main(["--config", b]) == 0
    assert "(1 run, 2 already recorded, 0 failed)" in capsys.readouterr().out
