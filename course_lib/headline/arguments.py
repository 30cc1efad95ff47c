"""The checks at the boundaries of the parameter count (``param_count``): one validator per boundary, named after
it, taking the boundary's parameters by name (``core.validation.boundary``), raising TypeError for a wrong type
and ValueError for a wrong value."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from course_lib.core.validation import check_int

if TYPE_CHECKING:
    from course_lib.headline.param_count import ModelSizes


def model_sizes(sizes: ModelSizes) -> None:
    """``ModelSizes``: every size an int >= 0 (q_lora_rank None or >= 1), tie_word_embeddings a bool, no more
    dense layers than layers and no more experts per token than routed experts."""
    for f in dataclasses.fields(sizes):
        value = getattr(sizes, f.name)
        if f.name == "tie_word_embeddings":
            if not isinstance(value, bool):
                raise TypeError(f"tie_word_embeddings must be a bool, got {value!r}")
        elif not (f.name == "q_lora_rank" and value is None):
            check_int(f.name, value, 1 if f.name == "q_lora_rank" else 0)
    if sizes.first_k_dense_replace > sizes.num_hidden_layers:
        raise ValueError(f"first_k_dense_replace ({sizes.first_k_dense_replace}) exceeds num_hidden_layers "
                         f"({sizes.num_hidden_layers})")
    if sizes.num_experts_per_tok > sizes.n_routed_experts:
        raise ValueError(f"num_experts_per_tok ({sizes.num_experts_per_tok}) exceeds n_routed_experts "
                         f"({sizes.n_routed_experts})")


def moe_ffn_params(dim: Any, expert_dim: Any, n_routed: Any, n_shared: Any, top_k: Any) -> None:
    """``param_count.moe_ffn_params``: sizes ints >= 0, top_k <= n_routed."""
    for name, value in (("dim", dim), ("expert_dim", expert_dim), ("n_routed", n_routed), ("n_shared", n_shared),
                        ("top_k", top_k)):
        check_int(name, value, 0)
    if top_k > n_routed:
        raise ValueError(f"top_k ({top_k}) cannot exceed the number of routed experts ({n_routed})")


def check_sizes(s: object) -> None:
    """Raise TypeError unless ``s`` is a ModelSizes."""
    from course_lib.headline.param_count import ModelSizes

    if not isinstance(s, ModelSizes):
        raise TypeError(f"expected a ModelSizes (e.g. param_count.DEEPSEEK_V3), got {type(s).__name__}")


def attention_params(s: Any) -> None:
    """``param_count.attention_params``: a ModelSizes."""
    check_sizes(s)


def param_breakdown(s: Any) -> None:
    """``param_count.param_breakdown``: a ModelSizes."""
    check_sizes(s)


def count_params(s: Any) -> None:
    """``param_count.count_params``: a ModelSizes."""
    check_sizes(s)
