"""The tuner (benchmark.tune): dev split only, the same budget for every method, trials resumed as fits, a method's
search space declared on its params and shown by --list-methods."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark import harness, tune
from benchmark.params import Param, Space
from benchmark.records import read_records
from benchmark.registry import BaseMethod, TrainData, describe_methods, register

CONFIG = """
out = "{out}"
[datasets.quick-dev]
name = "synthetic:quick"
dev_queries = 300
[search]
nprobes = [8, 32]
[tune]
trials = 3
sampler_seed = 7
[[runs]]
methods = ["jpq", "distill-vq", "test-tunable"]
params = {{ M = 8, epochs = 0.5, opq_niter = 5 }}
[[runs]]
methods = ["distill-vq"]
params = {{ nlist = 32 }}
"""


@register
class Tunable(BaseMethod):
    """A plug-in with a search space: faiss PQ whose training sample size is tuned."""

    name = "test-tunable"
    family = "reconstruction"
    params = {"M": Param(8, "bytes", min=1), "epochs": Param(1.0, "unused", min=0),
              "opq_niter": Param(5, "unused", min=1),
              "max_train_points": Param(2000, "docs the PQ trains on", min=256,
                                        search=Space(choices=(500, 1000, 4000)))}

    def fit(self, train: TrainData):
        from benchmark.vq.faiss_init import trained_params
        vq = trained_params(train.doc_emb, f"PQ{self.config['M']}", seed=train.seed,
                            max_train_points=self.config["max_train_points"])
        vq.writeback = "codes"
        return vq


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(text.format(out=tmp_path / "out"))
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    seen: list[str] = []
    real = harness.evaluate

    def spy(index, ds, split, *a, **k):
        seen.append(split.name)
        return real(index, ds, split, *a, **k)
    mp = pytest.MonkeyPatch()
    mp.setenv("VQBENCH_DATA_DIR", str(tmp / "cache"))
    import benchmark.runner as runner
    mp.setattr(runner, "evaluate", spy)
    code = tune.main(["--config", str(_config(tmp)), "--threads", "1"])
    mp.undo()
    return tmp, code, seen


def test_the_tuner_sees_only_the_dev_split(tuned):
    tmp, code, seen = tuned
    assert code == 0 and seen and set(seen) == {"dev"}
    records, problems = read_records(tmp / "out" / "results.jsonl")
    assert not problems and {r["split"] for r in records} == {"dev"}
    # every record says its split was carved out of the labeled train queries: the report calls it a development split
    assert {json.dumps(r["setup"]["eval_split"], sort_keys=True) for r in records} == {
        json.dumps({"name": "dev", "carved_from_train": 300, "seed": 0}, sort_keys=True)}
    from benchmark.report.document import build_report
    build_report(tmp / "out", out_dir=tmp / "report")
    assert "**Development split, not a test result**: `quick-dev`" in (tmp / "report" / "leaderboard.md").read_text()


def test_every_method_gets_the_same_budget_and_trial_0_is_its_defaults(tuned):
    tmp, _, _ = tuned
    trials = [json.loads(line) for line in (tmp / "out" / "tuning" / "trials.jsonl").read_text().splitlines()]
    per_study: dict[tuple, list[dict]] = {}
    for t in trials:
        per_study.setdefault((t["method"], json.dumps(t["fixed"], sort_keys=True)), []).append(t)
    assert len(per_study) == 4 and {len(v) for v in per_study.values()} == {3}
    assert [t["trial"] for t in trials] == [0] * 4 + [1] * 4 + [2] * 4     # round robin: equal budget so far
    from benchmark.provenance import cpu
    assert {t["machine"] for t in trials} == {cpu()}                        # where each trial's fit ran
    for (method, _), ts in per_study.items():
        assert [t["trial"] for t in ts] == [0, 1, 2]
        assert all(t["value"] is not None and 0 < t["value"] <= 1 for t in ts)
        assert all(t["cpu_seconds"] > 0 and t["wall_seconds"] > 0 for t in ts if t["state"] == "ok")
        assert all(t["state"] in ("ok", "repeat") for t in ts)
    jpq = per_study[("jpq", json.dumps({"M": 8, "epochs": 0.5, "opq_niter": 5}, sort_keys=True))]
    assert jpq[0]["params"]["negatives"] == "pool" and jpq[0]["params"]["temperature"] == 0.02   # the defaults
    assert "epochs" in jpq[0]["params"] and jpq[0]["params"]["epochs"] == 0.5    # fixed params are not tuned
    assert len({json.dumps(t["params"], sort_keys=True) for t in jpq}) == 3       # the sampler explores
    table = (tmp / "out" / "tuning" / "tuning.md").read_text()
    assert table.count("| quick-dev |") == 4 and "CPU s" in table
    best = (tmp / "out" / "tuning" / "best.toml").read_text()
    assert best.count("[[runs]]") == 4 and 'methods = ["test-tunable"]' in best
    import tomllib
    runs = tomllib.loads(best)["runs"]                  # valid TOML, a None default left out
    assert len(runs) == 4 and all("adapter_lr" not in r["params"] or r["params"]["adapter_lr"] for r in runs)
    assert all(r["tuning"]["trials"] == 3 and r["tuning"]["split"] == "dev" and r["tuning"]["cpu_seconds"] > 0
               and r["tuning"]["trace"].endswith("tuning/trials.jsonl") for r in runs)


def test_a_resumed_tuning_refits_nothing_and_keeps_the_trace(tuned, monkeypatch):
    tmp, _, _ = tuned
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp / "cache"))
    before = (tmp / "out" / "tuning" / "trials.jsonl").read_text()
    lines = (tmp / "out" / "results.jsonl").read_text().count("\n")
    import benchmark.runner as runner
    monkeypatch.setattr(runner, "execute_fit", lambda *a, **k: pytest.fail("a recorded trial was fitted again"))
    assert tune.main(["--config", str(_config(tmp)), "--threads", "1"]) == 0
    assert (tmp / "out" / "tuning" / "trials.jsonl").read_text() == before
    assert (tmp / "out" / "results.jsonl").read_text().count("\n") == lines


def test_tuning_some_methods_keeps_the_other_studies_trials(tuned, monkeypatch):
    tmp, _, _ = tuned
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp / "cache"))
    path = tmp / "out" / tune.TRIALS_FILE
    before = tune.read_trace(path)
    assert tune.main(["--config", str(_config(tmp)), "--threads", "1", "--methods", "jpq"]) == 0
    after = tune.read_trace(path)
    key = lambda t: (t["method"], json.dumps(t["fixed"], sort_keys=True), t["trial"])   # noqa: E731
    assert sorted(map(key, after)) == sorted(map(key, before))          # every study's trials, not only jpq's
    seconds = {key(t): t["cpu_seconds"] for t in before}
    assert all(t["cpu_seconds"] == seconds[key(t)] for t in after if t["method"] != "jpq")
    assert [key(t) for t in after] == [key(t) for t in before]           # in the same round-robin order


def test_a_dataset_with_a_test_split_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import benchmark.runner as runner
    monkeypatch.setattr(runner, "execute_fit", lambda *a, **k: pytest.fail("a trial trained"))
    text = CONFIG.replace("dev_queries = 300\n", "")
    assert tune.main(["--config", str(_config(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "error: dataset 'quick-dev': tuning evaluates on a dev split, but this one evaluates on 'test'" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_bad_tune_tables_are_one_line_each():
    with pytest.raises(tune.ConfigError) as exc:
        tune.tune_settings({"trials": 0, "measure": "ndcg", "nprobe": "all", "seed": 1}, "c.toml")
    assert len(exc.value.problems) == 4 and any("unknown key 'seed'" in p for p in exc.value.problems)


def test_a_search_space_is_declared_on_params_and_listed():
    text = describe_methods()
    assert "max_train_points=2000  (int >= 256)  docs the PQ trains on  [tuned over {500, 1000, 4000}]" in text
    assert "lr_pq=0.001" in text and "[tuned over log-[0.0001, 0.01]]" in text
    with pytest.raises(Exception, match="search choice"):
        Param(8, "x", min=4, search=Space(choices=(2, 8)))     # a choice the param itself would reject


def test_a_folder_being_tuned_is_not_written_by_a_second_tuner(tmp_path, capsys):
    from benchmark.lock import folder_lock
    config = _config(tmp_path)
    with folder_lock(tmp_path / "out"):
        assert tune.main(["--config", str(config)]) == 2
    assert "is being written by another run" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_every_learned_objective_exposes_the_same_training_knobs_and_spaces():
    """Declared once (benchmark.vq.train.train_params): the tuner sees the same knobs over the same spaces."""
    from benchmark.registry import available
    from benchmark.vq.train import query_side_params, train_params
    shared = train_params()
    side = query_side_params()
    for name, cls in available().items():
        if cls.family not in ("contrastive", "distillation") or not cls.__module__.startswith("methods."):
            continue
        declared = cls.declared_params()
        warmup = "warmup_ratio" if "warmup_ratio" in declared else "warmup"
        for key, param in shared.items():
            key = warmup if key == "warmup" else key
            assert key in declared, (name, key)
            assert declared[key].search == param.search and declared[key].choices == param.choices, (name, key)
        # the query side, declared once too (query_side_params): the same switch and the same adapter-lr space
        lr_key = "adapter_lr" if "adapter_lr" in declared else "lr_adapter"
        assert declared["query_adapter"].search == side["query_adapter"].search is not None, name
        assert declared["query_adapter"].type is bool, name
        assert declared[lr_key].search == side["lr_adapter"].search is not None, name


def test_tuned_runs_carry_their_budget_into_the_records_and_the_report(tmp_path, capsys):
    """best.toml's ``tuning = {...}`` rides along a [[runs]] table into every record of its fits (provenance, not
    params: the fit ids stay those of the params) and shows in the report's Tuning column; a typo is refused."""
    import tomllib
    from benchmark.cli import main
    run = ('[[runs]]\nmethods = ["faiss-pq"]\nparams = { M = 8 }\n'
           'tuning = { trace = "t/trials.jsonl", split = "dev", trials = 24, cpu_seconds = 7200.0, best_trial = 3 }\n'
           '[[runs]]\nmethods = ["faiss-opq"]\nparams = { M = 8 }\n')
    assert tomllib.loads(run)["runs"][0]["tuning"]["trials"] == 24
    (tmp_path / "c.toml").write_text(run)
    out = tmp_path / "out"
    assert main(["--config", str(tmp_path / "c.toml"), "--quick", "--out", str(out)]) == 0
    records, _ = read_records(out / "results.jsonl")
    tuned = {r["method"]: r.get("tuning") for r in records}
    assert tuned["faiss-pq"] == {"trace": "t/trials.jsonl", "split": "dev", "trials": 24, "cpu_seconds": 7200.0,
                                 "best_trial": 3}
    assert tuned["faiss-opq"] is None
    md = (out / "leaderboard.md").read_text()
    assert "| 24 trials, 2.0 CPU-h (t) |" in md and "| defaults |" in md
    (tmp_path / "bad.toml").write_text(run.replace("trials = 24", "trails = 24"))
    capsys.readouterr()
    assert main(["--config", str(tmp_path / "bad.toml"), "--quick", "--out", str(tmp_path / "o2")]) == 2
    assert "tuning: unknown key 'trails'" in capsys.readouterr().err


def test_a_test_config_takes_the_tuned_params_from_best_toml(tmp_path):
    """[[runs]] tuned = "<best.toml>": each method gets the tuner's chosen params (the run's own on top, e.g. M) and
    the tuning provenance; a method the file does not hold, a missing file, or tuned + tuning are refused."""
    from benchmark.config import ConfigError, plan
    best = tmp_path / "best.toml"
    best.write_text(
        '[[runs]]\nmethods = ["faiss-ivfpq"]\nparams = { M = 16, nlist = 32, max_train_points = 3000 }\n'
        'tuning = { trace = "t.jsonl", split = "dev", trials = 24, cpu_seconds = 10.0, best_trial = 5 }\n'
        '[[runs]]\nmethods = ["faiss-ivfopq"]\nparams = { M = 16, nlist = 64 }\n')
    config = tmp_path / "c.toml"
    config.write_text(f'seeds = 3\n[[runs]]\ntuned = "{best}"\nmethods = ["faiss-ivfpq", "faiss-ivfopq"]\n'
                      'params = { M = [8, 4] }\nseeds = 2\n')             # the run's seeds: the first 2 of 3
    jobs = plan(config=str(config), quick=True).jobs
    got = sorted((j.method, j.params["M"], j.params["nlist"], j.seed, (j.tuning or {}).get("trials")) for j in jobs)
    assert got == [("faiss-ivfopq", 4, 64, 0, None), ("faiss-ivfopq", 4, 64, 1, None),
                   ("faiss-ivfopq", 8, 64, 0, None), ("faiss-ivfopq", 8, 64, 1, None),
                   ("faiss-ivfpq", 4, 32, 0, 24), ("faiss-ivfpq", 4, 32, 1, 24),
                   ("faiss-ivfpq", 8, 32, 0, 24), ("faiss-ivfpq", 8, 32, 1, 24)]
    assert all(j.params.get("max_train_points") == 3000 for j in jobs if j.method == "faiss-ivfpq")
    config.write_text(f'[[runs]]\ntuned = "{best}"\nmethods = ["faiss-ivfpqq"]\n'
                      f'[[runs]]\ntuned = "{tmp_path / "none.toml"}"\nmethods = ["faiss-pq"]\n'
                      f'[[runs]]\ntuned = "{best}"\nmethods = ["faiss-ivfpq"]\ntuning = {{ trials = 1 }}\n')
    with pytest.raises(ConfigError) as err:
        plan(config=str(config), quick=True)
    text = str(err.value)
    assert "has no chosen params for 'faiss-ivfpqq' (did you mean 'faiss-ivfpq'" in text
    assert "none.toml (FileNotFoundError" in text and "give either tuned" in text


def test_the_budget_table_says_which_trials_ran_on_which_machine():
    # a tuning resumed across machines: the trials of each are listed as runs, not as a min-max span that overlaps
    def trial(n: int, machine: str) -> dict:
        return {"dataset": "d", "method": "m", "fixed": {}, "trial": n, "value": 0.5 + n / 100, "state": "ok",
                "cpu_seconds": 10.0, "wall_seconds": 8.0, "machine": machine}
    trace = [trial(n, "AMD x2" if n not in (4, 5, 9) else "Intel x2") for n in range(12)]
    table = tune.budget_table(trace, tune.TuneSettings(trials=12))
    assert "AMD x2: trials 0-3, 6-8, 10-11 (9 fits); Intel x2: trials 4-5, 9 (3 fits)" in table
    assert "| d | m | {} | 12 | 12 | 0 | 0 | 0 | 120 | 96 | 0.5000 | 0.6100 | 11 |" in table


def test_status_reads_the_trace_and_prices_the_rest_per_study(tuned, capsys):
    """--status: trials done of the budget, best so far, CPU seconds spent and left at each study's own mean; read
    from the trace only (no dataset loaded, no lock taken)."""
    st = [tune.Study("d", "a", (("M", 8),), 0), tune.Study("d", "b", (), 0), tune.Study("d", "c", (), 0)]
    t = lambda method, fixed, n, value, cpu, state="ok": {  # noqa: E731
        "dataset": "d", "method": method, "fixed": fixed, "trial": n, "value": value, "state": state,
        "cpu_seconds": cpu, "wall_seconds": None if cpu is None else cpu / 2}
    trace = [t("a", {"M": 8}, 0, 0.2, 100.0), t("a", {"M": 8}, 1, 0.3, 300.0), t("b", {}, 0, 0.1, 50.0),
             t("b", {}, 1, 0.1, 0.0, "repeat"), t("b", {}, 2, None, None, "rejected")]
    out = tune.status(st, trace, tune.tune_settings({"trials": 4}, "t")).splitlines()
    assert out[1].split() == ["d", "a(M=8)", "2/4", "0.3000", "400", "200", "400"]
    assert out[2].split() == ["d", "b", "3/4", "0.1000", "50", "50", "50"]
    assert out[3].split() == ["d", "c", "0/4", "—", "0", "—", "0"]
    assert out[4] == ("total: 450 CPU s spent; ~450 CPU s left (~0.1 h of wall time at this tuning's wall/CPU ratio "
                      "0.50); not counted: d c (no fitted trial yet)")
    tmp, _, _ = tuned
    assert tune.main(["--config", str(_config(tmp)), "--status"]) == 0
    printed = capsys.readouterr().out
    assert "quick-dev jpq(M=8,epochs=0.5,opq_niter=5)" in printed and "3/3" in printed and "~0 CPU s left" in printed


def test_shards_tune_the_same_trials_and_merge_into_one_tuning(tuned, tmp_path, monkeypatch, capsys):
    tmp, _, _ = tuned
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp / "cache"))
    config = _config(tmp)
    for i in (0, 1):
        assert tune.main(["--config", str(config), "--threads", "1", "--shard", f"{i}/2",
                          "--out", str(tmp_path / f"s{i}")]) == 0
    shard0 = tune.read_trace(tmp_path / "s0" / tune.TRIALS_FILE)
    assert {t["method"] for t in shard0} == {"jpq", "test-tunable"}      # studies 0 and 2 of the plan's four
    assert tune.main(["--config", str(config), "--out", str(tmp_path / "all"),
                      "--merge", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    assert "merged 2 shard(s)" in capsys.readouterr().out

    def trials(folder):   # what a study asked and got, per trial
        return [(t["method"], json.dumps(t["fixed"], sort_keys=True), t["trial"], t["fit_id"], t["value"])
                for t in tune.read_trace(folder / tune.TRIALS_FILE)]
    assert trials(tmp_path / "all") == trials(tmp / "out")                  # the same trials, in round-robin order
    one, merged = (read_records(f / "results.jsonl")[0] for f in (tmp / "out", tmp_path / "all"))
    assert sorted(r["fit_id"] for r in merged) == sorted(r["fit_id"] for r in one)
    assert all((tmp_path / "all" / r["per_query"]).exists() for r in merged if r.get("per_query"))
    def picks(folder):    # each study's chosen config (the seconds are each process's own)
        return [(b["method"], b["params"], b["trial"], b["dev_value"], b["trials"])
                for b in json.loads((folder / "tuning" / "best.json").read_text())]
    assert picks(tmp_path / "all") == picks(tmp / "out")
    # an older view of a study (a shard folder copied before the study went on, one trial refitted with another
    # value) is set aside, and said so: the shard holding most of the study's trials ran it
    old = [t for t in tune.read_trace(tmp_path / "s0" / tune.TRIALS_FILE) if t["method"] == "jpq" and t["trial"] < 2]
    old[1] = {**old[1], "value": old[1]["value"] + 0.01}
    (tmp_path / "old" / "tuning").mkdir(parents=True)
    (tmp_path / "old" / tune.TRIALS_FILE).write_text("".join(json.dumps(x) + "\n" for x in old))
    (tmp_path / "old" / "results.jsonl").write_text("")
    assert tune.main(["--config", str(config), "--out", str(tmp_path / "all"), "--merge", str(tmp_path / "old")]) == 0
    assert "superseded: quick-dev jpq:" in capsys.readouterr().out
    assert trials(tmp_path / "all") == trials(tmp / "out")
    # two shards that ran the same study to the same length with different fits are refused
    t = tune.read_trace(tmp_path / "s1" / tune.TRIALS_FILE)
    t[-1] = {**t[-1], "fit_id": "0" * 16}
    (tmp_path / "s1" / tune.TRIALS_FILE).write_text("".join(json.dumps(x) + "\n" for x in t))
    assert tune.main(["--config", str(config), "--out", str(tmp_path / "all"), "--merge", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err
    assert f"{t[-1]['method']}" in err and "3 trials with different fits" in err and "not shards of one tuning" in err
