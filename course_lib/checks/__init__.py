"""Exercise checkers: ``check_<exercise>(fn)`` for every exercise of the course.

Each prints a success line when the learner's code is right (values and, for a differentiable quantity,
gradients), prints a friendly line while it is still the stub, and raises ``CheckFailed`` naming the mistake
otherwise; a notebook shows that message alone. Checkers return None; ``outcome(check, fn)`` gives tests True
(passed) or False (stub).

The framework: ``verdict`` (CheckFailed, ``@checker``, ``expect``, ``outcome``), ``learner`` (``call_learner``, the
one wrapper around a call to the learner's code), ``comparison`` (``compare``, ``describe_value``), ``cases``
(``Case``, ``Mistake``: every catalogue of mistakes is a list of them), ``gradients`` (``gradient_problem``) and
``function`` (``check_function``). The checkers, one module per topic: ``headline`` (notebook 00), ``routing`` (the
top-k route, 01 and 03), ``balance`` (load, MaxVio, bias update, balance losses, 02-03), ``mtp`` (04),
``training`` (05), ``attention`` (07), ``speculative`` (08; its inputs and catalogue in ``speculative_cases``),
``expert_parallel`` (09), ``fp8`` (10), ``yarn`` (11), ``pipeline`` (12), ``eplb`` (13), ``grpo`` (14),
``sparse_attention`` (15).

Names are imported on first use (module ``__getattr__``): importing notebook 01's checkers loads neither
torch.distributed's expert parallelism, nor training, nor FP8.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {  # every public name of the package -> the module that defines it
    "CheckFailed": "verdict", "checker": "verdict", "expect": "verdict", "outcome": "verdict",
    "call_learner": "learner", "Case": "cases", "Mistake": "cases", "check_function": "function",
    "check_gpu_utilisation": "headline", "check_moe_ffn_params": "headline",
    "check_topk_route": "routing",
    "check_expert_load": "balance", "check_max_violation": "balance", "check_update_bias": "balance",
    "check_balance_loss": "balance", "check_sequence_balance_loss": "balance",
    "check_mtp_depth_loss": "mtp", "check_mtp_forward": "mtp", "check_mtp_loss": "mtp",
    "check_train_step": "training",
    "check_dispatch_plan": "expert_parallel",
    "check_quantize_per_tile": "fp8",
    "check_attend_absorbed": "attention", "check_mla_forward": "attention",
    "check_yarn_frequencies": "yarn", "check_yarn_softmax_scale": "yarn",
    "check_verify_sampled": "speculative",
    "check_one_f_one_b_order": "pipeline",
    "check_replicate": "eplb", "check_pack": "eplb",
    "check_group_advantages": "grpo", "check_grpo_loss": "grpo",
    "check_index_scores": "sparse_attention", "check_top_k_mask": "sparse_attention",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (the checkers of one notebook load only theirs)."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
