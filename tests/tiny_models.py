"""The tiny model the tests build: one set of sizes, changed where a test needs another (imported by the test files;
the fixtures ``tiny_model`` and ``corpus`` are in tests/conftest.py)."""

import torch

from course_lib.model.tiny import ModelConfig, TinyDeepSeek

TINY_SIZES = dict(dim=32, n_layers=2, n_heads=2, n_dense_layers=1, n_routed_experts=8, n_shared_experts=1, top_k=2,
                  expert_dim=16, max_seq_len=32, mtp_depth=1)


def tiny_config(**changes) -> ModelConfig:
    """A ModelConfig of ``TINY_SIZES`` (a dense layer, an MoE layer of 8 routed experts and 1 shared, top-2, one MTP
    module, 96 characters of vocabulary) with ``changes``."""
    return ModelConfig(**{**TINY_SIZES, **changes})


def tiny_model(**changes) -> TinyDeepSeek:
    """A TinyDeepSeek of ``tiny_config(**changes)``, its weights drawn after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return TinyDeepSeek(tiny_config(**changes))
