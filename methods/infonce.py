"""InfoNCE on the PQ codebooks (LibVQ's contrastive loss), written on the shared training core.

Each labeled query's positive (its highest-graded relevant doc) is scored against the batch's other positives and
``hard_negatives`` docs per query sampled from its top-``hard_k`` in the init index (mined once, cached; every
IVF list, or ``mine_nprobe`` of them in ``infonce-pq-ivf``: the scale knob shared with JPQ), all
shared in the batch; the query's own relevant docs are masked out. Loss: cross-entropy of softmax(<q, PQ(d)> /
temperature). The faiss-opq init (same cache entry) fixes the rotation and every doc's codes; only codewords move
(``infonce-pq-ivf``: the faiss-ivfopq init, whose centroids move too, each doc keeping its list; the query adapter,
off by default as in LibVQ, is the shared d x d map of the training core).
Plain in-batch InfoNCE (``hard_negatives=0``) learns a shortcut of the synthetic default (random docs are told apart
by the nuisance part a query keeps of its source doc) and loses to its init: nDCG@10 0.434 vs faiss-opq 0.436 (seed
0; lr 3e-4..1e-2, temperature 0.02..1, batch 64..256: all <= 0.436); 64 mined negatives, temperature 0.02: 0.444.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.params import Param, Space
from benchmark.registry import BaseMethod, DataFacts, TrainData, register
from benchmark.vq import VQParams, factory_string
from benchmark.vq.faiss_init import INIT_PARAMS, OPQ_THREADS_NOTE, init_for
from benchmark.vq.mining import index_topk
from benchmark.vq.torch_vq import TorchVQ
from benchmark.vq.train import (LR_SPACE, M_PARAM, MINE_NPROBE_PARAM, NLIST_PARAM, TEMPERATURE_SPACE,
                                Step, Trainer, mine_nprobe_problems, positives, query_side_params, train_params,
                                train_spec)


@register
class InfoNCEPQ(BaseMethod):
    """InfoNCE (LibVQ's contrastive loss): OPQ codebooks trained on labeled positives vs in-batch + mined docs."""

    name = "infonce-pq"
    reproducibility = "threads"
    reproducibility_note = OPQ_THREADS_NOTE
    family = "contrastive"
    params = {"M": M_PARAM, **train_params(), **INIT_PARAMS,
              "lr": Param(1e-3, "codebook learning rate", min=0, min_exclusive=True, search=LR_SPACE),
              "temperature": Param(0.02, "scores are divided by it", min=0, min_exclusive=True,
                                   search=TEMPERATURE_SPACE),
              "hard_negatives": Param(64, "mined negatives per query (0 = plain in-batch)", min=0,
                                      search=Space(choices=(16, 64, 128))),
              "hard_k": Param(200, "negatives are sampled from the init index's top-hard_k", min=1),
              "mine_nprobe": MINE_NPROBE_PARAM,
              "label_fraction": Param(1.0, "share of the labeled queries used (seeded; the same share as JPQ's)",
                                      min=0, max=1, min_exclusive=True, legacy=(1.0,)),
              **query_side_params(adapter=False, lr=1e-3, legacy=True)}
    ivf = False

    def factory(self) -> str:
        return factory_string(self.config["M"], self.config["nlist"] if self.ivf else 0, opq=True)

    def learning_rates(self) -> dict[str, float]:
        cfg = self.config
        rates = {"codebooks": cfg["lr"]}
        if cfg["query_adapter"]:
            rates["query_map"] = cfg["lr_adapter"]
        if self.ivf:
            rates["centroids"] = cfg["lr_ivf"]
        return rates

    def labels_needed(self) -> bool:
        return True

    def check_config(self) -> list[str]:
        problems = super().check_config()
        if self.config["batch_size"] < 2:
            problems.append(f"batch_size must be >= 2 (the other queries' positives are the in-batch negatives), got "
                            f"{self.config['batch_size']}")
        return problems + mine_nprobe_problems(self.config, self.ivf, self.config["hard_negatives"] > 0)

    def check_data(self, data: DataFacts) -> list[str]:
        cfg, problems = self.config, super().check_data(data)
        if not cfg["hard_negatives"] <= cfg["hard_k"] <= data.num_docs:
            problems.append(f"needs hard_negatives <= hard_k <= the number of docs ({data.num_docs}), got "
                            f"hard_negatives={cfg['hard_negatives']}, hard_k={cfg['hard_k']}")
        return problems

    def fit(self, train: TrainData) -> VQParams:
        self.require_data(train)
        cfg = self.config
        pos = positives(train, self.name).sample(cfg["label_fraction"], train.seed)
        init = init_for(train, self.factory(), cfg)
        top, mining = index_topk(init, train.doc_emb, pos.query_emb(train), cfg["hard_k"], train.cache_dir,
                                 cfg["mine_nprobe"])
        spec = train_spec(cfg)
        trainer = Trainer(TorchVQ(init, query_adapter=cfg["query_adapter"]), self.learning_rates(), spec, train.seed,
                          train.device, self.name)
        vq, dev = trainer.vq, trainer.device
        q_all, best, top, rel = (torch.from_numpy(a).to(dev) for a in (pos.query_emb(train), pos.best(), top,
                                                                         pos.padded()[0]))

        def loss(step: Step) -> torch.Tensor:
            rows = torch.from_numpy(step.rows).to(dev)
            pick = torch.rand(len(rows), top.shape[1], generator=step.gen).argsort(1)[:, :cfg["hard_negatives"]]
            docs = torch.cat([best[rows], top[rows].long().gather(1, pick.to(dev)).flatten()])
            masked = (docs[None, :, None] == rel[rows][:, None, :]).any(-1)     # a query's relevant docs ...
            masked[:, :len(rows)].fill_diagonal_(False)                        # ... except its own positive
            scores = vq.encode_queries(q_all[rows]) @ vq.reconstruct(docs).T / cfg["temperature"]
            return F.cross_entropy(scores.masked_fill(masked, float("-inf")), torch.arange(len(rows), device=dev))

        trainer.fit(loss, len(pos))
        return trainer.to_params("codes", negative_mining=mining, train_queries_from={
            "queries": "labeled", "labels_used": True, "n": len(pos), "fraction": cfg["label_fraction"],
            "from": "train split, with its qrels"})


@register
class InfoNCEPQIVF(InfoNCEPQ):
    """InfoNCE in the IVF layout: OPQ codebooks and IVF centroids trained; starts from faiss-ivfopq's init."""

    name = "infonce-pq-ivf"
    ivf = True
    params = {**InfoNCEPQ.params, "nlist": NLIST_PARAM,
              "lr_ivf": Param(1e-3, "learning rate of the IVF centroids", min=0, min_exclusive=True, search=LR_SPACE)}

