"""The dataset layer: dataset types and validation (:mod:`.dataset`), the loaders (:mod:`.synthetic`, :mod:`.npy`,
:mod:`.beir` with :mod:`.encode` and :mod:`.catalog`), and the name -> loader table (:mod:`.loaders`)."""
from benchmark.data.dataset import (DatasetError, Qrels, RetrievalDataset, Split, carve_dev, check_embeddings,
                                    check_qrels, check_unique, option_hint, validate)
from benchmark.data.loaders import (COMMON_OPTIONS, LOADERS, DatasetLoader, check_dataset, check_dataset_name,
                                    dataset_forms, dataset_options, describe_dataset_options, list_datasets,
                                    load_dataset, parse_dataset_opt, resolve)

__all__ = ["COMMON_OPTIONS", "DatasetError", "DatasetLoader", "LOADERS", "Qrels", "RetrievalDataset", "Split",
           "carve_dev", "check_dataset", "check_dataset_name", "check_embeddings", "check_qrels", "check_unique",
           "dataset_forms", "dataset_options", "describe_dataset_options", "list_datasets", "load_dataset",
           "option_hint", "parse_dataset_opt", "resolve", "validate"]
