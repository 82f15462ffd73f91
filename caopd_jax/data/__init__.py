"""Data layer: tfds builders written as array_record and read through tfds data sources.

No TensorFlow is needed (see README notes in `loader`). Datasets by name:
  arithmetic  embedded arithmetic task (ops add, sub, mul1); splits train, test, ood
  science     science MCQ from a CaOPD/SDFT save_to_disk folder; splits eval[, train]
  tooluse     tool use from a CaOPD/SDFT save_to_disk folder; splits eval[, train]

    from caopd_jax import data
    src = data.get_source("arithmetic", "train", data.data_dir_for(workdir), op="add")
    it = data.BatchIterator(src, 32, seed=0, start_step=step)
"""

from caopd_jax.data.arithmetic import OPS as ARITHMETIC_OPS
from caopd_jax.data.arithmetic import CaopdArithmetic, make_config
from caopd_jax.data.hf_arrow import DataFormatError
from caopd_jax.data.loader import (DATA_ENV, DATASETS, BatchIterator, Source, as_columns,
                                   data_dir_for, get_builder, get_items, get_source, head,
                                   prepare, records)
from caopd_jax.data.science import CaopdScience
from caopd_jax.data.tooluse import CaopdTooluse

__all__ = [
    "ARITHMETIC_OPS", "BatchIterator", "CaopdArithmetic", "CaopdScience", "CaopdTooluse",
    "DATASETS", "DATA_ENV", "DataFormatError", "Source", "as_columns", "data_dir_for",
    "get_builder", "get_items", "get_source", "head", "make_config", "prepare", "records",
]
