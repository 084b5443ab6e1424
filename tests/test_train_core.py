"""The shared training core (benchmark/vq/train.py): schedules, batching, seeding, optimisers, drift, info, labels;
and the faiss init's timing info (no module global) and quiet small-sample training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.registry import TrainData
from benchmark.vq import VQParams
from benchmark.vq.faiss_init import trained_params
from benchmark.vq.torch_vq import TorchVQ
from benchmark.vq.train import Positives, Step, Trainer, TrainSpec, lr_factor, positives

M, DSUB, N = 4, 2, 300


def tiny_vq(seed: int = 0, nlist: int = 0) -> TorchVQ:
    rng = np.random.default_rng(seed)
    vq = VQParams(pq_codebooks=rng.standard_normal((M, 256, DSUB)).astype(np.float32),
                  ivf_centroids=rng.standard_normal((nlist, M * DSUB)).astype(np.float32) if nlist else None,
                  doc_assign=rng.integers(0, nlist, N) if nlist else None,
                  doc_codes=rng.integers(0, 256, (N, M)).astype(np.uint8), writeback="codes")
    return TorchVQ(vq)


QUERIES = torch.from_numpy(np.random.default_rng(1).standard_normal((40, M * DSUB)).astype(np.float32))


def random_doc_loss(trainer: Trainer):
    """Scores of each batch query against 5 docs drawn with the step's numpy rng and 3 with its torch generator."""
    def loss(step):
        docs = np.concatenate([step.rng.integers(0, N, 5), torch.randint(0, N, (3,), generator=step.gen).numpy()])
        q = QUERIES[torch.from_numpy(step.rows)]
        scores = q @ trainer.vq.reconstruct(torch.from_numpy(docs)).T
        return torch.logsumexp(scores, 1).mean() - scores[:, 0].mean(), {"rows": float(step.rows.sum())}
    return loss


def test_schedule_shapes() -> None:
    # warm-up 2 of 10 steps: (step + 1) / 2, then linear to 0 at step 10 / constant / half a cosine
    assert [lr_factor("linear", s, 2, 10) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    assert [lr_factor("constant", s, 2, 10) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 2, 10) for s in (2, 4, 6, 10)]
    np.testing.assert_allclose(cosine, [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0], atol=1e-12)
    assert lr_factor("constant", 0, 0, 10) == 1.0          # no warm-up


def test_batches_are_one_seeded_permutation_per_epoch() -> None:
    for shuffle in ("numpy", "torch"):
        trainer = Trainer(tiny_vq(), {"codebooks": 1e-3}, TrainSpec(2.0, 8, shuffle=shuffle), 0, "cpu", "t")
        batches = trainer.batches(20, 5)                   # 5 steps x 8 = 40 rows = exactly 2 epochs
        assert [len(b) for b in batches] == [8] * 5
        rows = np.concatenate(batches)
        assert sorted(rows[:20]) == list(range(20)) and sorted(rows[20:]) == list(range(20))
        again = Trainer(tiny_vq(), {"codebooks": 1e-3}, TrainSpec(2.0, 8, shuffle=shuffle), 0, "cpu", "t")
        np.testing.assert_array_equal(np.concatenate(again.batches(20, 5)), rows)
    torch_rows = np.concatenate(Trainer(tiny_vq(), {"codebooks": 1e-3}, TrainSpec(shuffle="torch"), 0, "cpu",
                                        "t").batches(20, 1))
    # batch 32 > 20 items: one batch spans two epochs' permutations; the first is torch.randperm of the seed
    np.testing.assert_array_equal(torch_rows[:20], torch.randperm(20, generator=torch.Generator().manual_seed(0)))
    assert len(torch_rows) == 32 and sorted(torch_rows[20:]) == sorted(set(torch_rows[20:]))


def fit(seed: int, **spec):
    trainer = Trainer(tiny_vq(), {"codebooks": 1e-2}, TrainSpec(**{"epochs": 2.0, "batch_size": 8, **spec}),
                      seed, "cpu", "test")
    info = trainer.fit(random_doc_loss(trainer), len(QUERIES))
    return trainer.to_params("codes"), info


def untimed(info: dict) -> dict:
    return {k: v for k, v in info.items() if "seconds" not in k and k != "queries_per_s"}


def test_same_seed_same_result_and_info() -> None:
    (a, info_a), (b, info_b) = fit(0), fit(0)
    np.testing.assert_array_equal(a.pq_codebooks, b.pq_codebooks)
    assert untimed(info_a) == untimed(info_b)
    c, _ = fit(1)
    assert np.abs(c.pq_codebooks - a.pq_codebooks).max() > 1e-4


def test_info_records_steps_losses_lr_drift_and_extras() -> None:
    vq, info = fit(0)
    init = tiny_vq().codebooks.detach().numpy()
    assert info["steps"] == 10 and info["train_queries"] == 40 and info["warmup_steps"] == 1   # round(0.1 * 10)
    assert info["lr_codebooks"] == 1e-2 and info["optimizer"] == "adamw" and info["schedule"] == "linear"
    drift = np.linalg.norm(vq.pq_codebooks - init) / np.linalg.norm(init)
    assert info["drift_codebooks"] == pytest.approx(drift, rel=1e-5) and drift > 0
    # extras are averaged over the last 10% of the steps (here the last one): the sum of step 10's rows
    twin = Trainer(tiny_vq(), {"codebooks": 1e-2}, TrainSpec(2.0, 8), 0, "cpu", "test")
    assert info["rows"] == float(twin.batches(40, 10)[9].sum())
    assert info["loss_first"] > 0 and info["train_loop_seconds"] > 0 and info["torch_threads"] >= 1
    assert vq.info["steps"] == 10                                   # to_params carries the loop's info


def test_sgd_constant_schedule_is_one_plain_gradient_step() -> None:
    trainer = Trainer(tiny_vq(), {"codebooks": 0.5}, TrainSpec(1.0, 40, warmup=0.0, schedule="constant",
                                                                optimizer="sgd"), 0, "cpu", "t")
    before = trainer.vq.codebooks.detach().clone()
    loss = random_doc_loss(trainer)
    # the same loss on the same draws, by hand: a fresh trainer with the same seed replays the step
    twin = Trainer(tiny_vq(), {"codebooks": 0.5}, TrainSpec(1.0, 40, warmup=0.0, schedule="constant",
                                                             optimizer="sgd"), 0, "cpu", "t")
    rows = twin.batches(40, 1)[0]
    value, _ = random_doc_loss(twin)(Step(rows, 0, twin.rng, twin.gen, twin.device))
    value.backward()
    trainer.fit(loss, 40)
    np.testing.assert_allclose(trainer.vq.codebooks.detach(), before - 0.5 * twin.vq.codebooks.grad, atol=1e-6)


def test_adam_first_step_moves_each_touched_coordinate_by_lr() -> None:
    for name in ("adam", "adamw"):
        trainer = Trainer(tiny_vq(), {"codebooks": 1e-2}, TrainSpec(1.0, 40, warmup=0.0, schedule="constant",
                                                                     optimizer=name), 0, "cpu", "t")
        before = trainer.vq.codebooks.detach().clone()
        trainer.fit(random_doc_loss(trainer), 40)
        moved = (trainer.vq.codebooks.detach() - before).abs()
        touched = moved > 0
        assert touched.any()
        np.testing.assert_allclose(moved[touched], 1e-2, rtol=1e-3)    # Adam's first step: lr * sign(grad)


def test_frozen_tensors_and_bad_setups() -> None:
    trainer = Trainer(tiny_vq(nlist=4), {"codebooks": 1e-2}, TrainSpec(1.0, 8), 0, "cpu", "t")
    before = trainer.vq.centroids.detach().clone()
    trainer.fit(random_doc_loss(trainer), 40)
    assert not trainer.vq.centroids.requires_grad and torch.equal(trainer.vq.centroids, before)
    assert "drift_centroids" not in trainer.info
    with pytest.raises(ValueError, match="trainable tensors must be some of"):
        Trainer(tiny_vq(), {"centroids": 1e-3}, TrainSpec(), 0, "cpu", "t")    # flat PQ: no centroids
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        Trainer(tiny_vq(), {"codebooks": 0.0}, TrainSpec(), 0, "cpu", "t")
    with pytest.raises(ValueError, match="TrainSpec.optimizer must be one of"):
        TrainSpec(optimizer="lbfgs")
    with pytest.raises(ValueError, match="TrainSpec.schedule must be one of"):
        TrainSpec(schedule="step")


def test_positives_map_qrels_to_doc_rows() -> None:
    docs = np.zeros((5, 2), dtype=np.float32)
    train = TrainData(doc_emb=docs, doc_ids=["a", "b", "c", "d", "e"], train_query_emb=np.eye(4, 2, dtype=np.float32),
                      train_query_ids=["q0", "q1", "q2", "q3"],
                      train_qrels={"q0": {"c": 1, "a": 2}, "q1": {"zz": 1, "b": 0}, "q2": {"e": 1}, "q3": {}})
    pos = positives(train, "m")
    assert pos.rows.tolist() == [0, 2]                        # q1: unknown doc and grade 0 only; q3: none
    assert pos.offsets.tolist() == [0, 2, 3] and pos.docs.tolist() == [2, 0, 4]   # qrels order kept
    idx, grade = pos.padded()
    assert idx.tolist() == [[2, 0], [4, -1]] and grade.tolist() == [[1, 2], [1, 0]]
    assert pos.best().tolist() == [0, 4]
    assert pos.subset(np.array([1])).docs.tolist() == [4]
    assert len(pos.sample(0.5, 0)) == 1 and pos.query_emb(train).tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="m needs labeled train queries"):
        positives(TrainData(doc_emb=docs, doc_ids=list("abcde")), "m")
    assert isinstance(pos, Positives)


def test_init_info_reports_cache_and_faiss_stays_quiet(tmp_path, capfd) -> None:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((1000, 16)).astype(np.float32)    # 1000 points < 39 x 256: faiss would warn
    fresh = trained_params(docs, "OPQ4,PQ4x8", seed=0, cache_dir=str(tmp_path), opq_niter=2)
    cached = trained_params(docs, "OPQ4,PQ4x8", seed=0, cache_dir=str(tmp_path), opq_niter=2)
    assert fresh.info["init_cached"] is False and fresh.info["cached_init_seconds"] == 0.0
    assert fresh.info["init_seconds"] > 0 and fresh.info["init_sample"] == 1000
    assert cached.info["init_cached"] is True
    assert cached.info["cached_init_seconds"] == cached.info["init_seconds"] == pytest.approx(
        fresh.info["init_seconds"], abs=1e-3)                     # read back from the .seconds file
    np.testing.assert_array_equal(fresh.pq_codebooks, cached.pq_codebooks)
    assert "WARNING clustering" not in capfd.readouterr().err


def test_infonce_trains_codewords_only_and_faiss_scores_as_torch(tmp_path) -> None:
    from benchmark.data import load_dataset
    from benchmark.registry import make_method
    from benchmark.runner import train_data
    from benchmark.vq import build_index
    from benchmark.vq.faiss_init import trained_params as init_of

    quick = load_dataset("synthetic:quick")
    train = train_data(quick, 0, "cpu", str(tmp_path))
    params = {"M": 8, "opq_niter": 2, "max_train_points": 2000, "hard_k": 50, "hard_negatives": 8}
    vq = make_method("infonce-pq", params).fit(train)
    init = init_of(quick.doc_emb, "OPQ8,PQ8x8", seed=0, cache_dir=str(tmp_path), max_train_points=2000, opq_niter=2)
    assert vq.writeback == "codes" and vq.info["init"] == "OPQ8,PQ8x8" and vq.info["init_cached"] is False
    assert vq.info["steps"] == math.ceil(800 / 32) and vq.info["drift_codebooks"] > 0
    np.testing.assert_array_equal(vq.doc_codes, init.doc_codes)           # codes and rotation are fixed
    np.testing.assert_array_equal(vq.rotation, init.rotation)
    queries = quick.split("test").query_emb[:50]
    scores, ids = build_index(vq, quick.doc_emb).search(queries, 10)
    model = TorchVQ(vq)
    torch_scores = model.scores(model.encode_queries(torch.from_numpy(queries)), torch.from_numpy(ids))
    np.testing.assert_allclose(scores, torch_scores.detach().numpy(), atol=1e-4)
    again = make_method("infonce-pq", params).fit(train)
    np.testing.assert_array_equal(again.pq_codebooks, vq.pq_codebooks)   # same seed, same codewords
    assert again.info["init_cached"] is True and vq.info["cached_init_seconds"] == 0.0
    assert again.info["cached_init_seconds"] == pytest.approx(vq.info["init_seconds"], abs=1e-3)
