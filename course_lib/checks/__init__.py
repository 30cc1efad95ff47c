"""Exercise checkers: ``check_<exercise>(fn)`` for every exercise of the course.

Each prints a success line when the learner's code is right (values and, for a differentiable quantity,
gradients), prints a friendly line while it is still the stub, and raises ``CheckFailed`` naming the mistake
otherwise; a notebook shows that message alone. Checkers return None; ``outcome(check, fn)`` gives tests
True (passed) or False (stub). See ``_core`` for the contract.
"""

from course_lib.checks._core import CheckFailed, Case, Mistake, call_learner, check_function, checker, expect, outcome
from course_lib.checks.headline import check_gpu_utilisation, check_moe_ffn_params
from course_lib.checks.routing import (check_balance_loss, check_expert_load, check_max_violation,
                                      check_sequence_balance_loss, check_topk_route, check_update_bias)
from course_lib.checks.mtp import check_mtp_depth_loss, check_mtp_forward, check_mtp_loss
from course_lib.checks.training import check_train_step
from course_lib.checks.expert_parallel import check_dispatch_plan
from course_lib.checks.fp8 import check_quantize_per_tile
from course_lib.checks.attention import check_attend_absorbed, check_mla_forward
from course_lib.checks.yarn import check_yarn_frequencies, check_yarn_softmax_scale
from course_lib.checks.speculative import check_verify_sampled
