"""Companion package of the hands-on course on DeepSeek-V3: one sub-package per area, in the order the course
teaches them, each the single implementation that the notebooks, the tests and the tiny model share.

- ``core``: RMSNorm and SwiGLU, the device / seed / thread helpers, validation at the boundary.
- ``headline``: the numbers the course cites, training compute, parameter counts (notebook 00).
- ``moe``: DeepSeekMoE's router, load balance and auxiliary-loss-free balancing, dispatch, the layer (01-03).
- ``model``: the Transformer block, Multi-Token Prediction and the tiny DeepSeek-style model (04-06).
- ``training``: its data, the training step, loop, checkpoints and command line (05-06), and the two training
  stages of DeepSeek Sparse Attention's indexer (15).
- ``attention``: RoPE, multi-head attention and Multi-head Latent Attention with their KV cache (07), YaRN (11),
  DeepSeek Sparse Attention's lightning indexer and top-k selection on MLA (15).
- ``inference``: speculative decoding with the MTP modules (08); serving: EPLB's redundant experts, per-GPU
  loads, what a day of serving costs (13).
- ``parallel``: torch.distributed process groups and expert parallelism (09), pipeline schedules, their
  simulator (GPipe, 1F1B, ZB1P, DualPipe, DualPipeV) and the tiny model pipelined with torch's schedules (12).
- ``precision``: FP8 with fine-grained scaling (10).
- ``post_training``: GRPO, group sampling with the KV cache, rule-based rewards, routing replay (14).
- ``checks``: the exercise checkers, one ``check_<exercise>`` per exercise.
- ``machinery``: the course's own tools: the notebook generator, the environment check, notebook costs, how kept
  outputs print numbers, the notebooks' diagrams.

docs/CONTRIBUTING.md ("The package's map") lists every module.
"""

from course_lib.core.runtime import get_device, seed_everything

__all__ = ["get_device", "seed_everything"]
__version__ = "0.1.0"
