"""Companion package of the hands-on course on DeepSeek-V3.

Each module holds one idea and is the single implementation that the notebooks, the tests and the
tiny model share:

- ``runtime``: the device helper (``get_device``), the seeding helper (``seed_everything``), and torch's thread
  count, chosen once at import from the CPUs the process may really use.
- ``facts``: the numbers the course cites, with their sources; ``compute`` and ``param_count``: training compute,
  GPU utilisation, parameter counts (notebook 00).
- ``routing``, ``balance``, ``moe`` and ``dispatch``: DeepSeekMoE's router, load balancing, the layer and its
  expert dispatch (loop or grouped GEMMs) (notebooks 01-03).
- ``layers``, ``attention`` and ``transformer``: RMSNorm and SwiGLU; multi-head attention and Multi-head Latent
  Attention with their KV cache (notebook 07); the Transformer block.
- ``mtp``, ``model``, ``data`` and ``train``: Multi-Token Prediction, the tiny DeepSeek model, its data and its
  training loop (notebooks 04-06).
- ``speculative``: the MTP modules as a speculative-decoding draft (notebook 08).
- ``distributed`` and ``expert_parallel``: expert parallelism on torch.distributed (notebook 09).
- ``fp8``: FP8 quantisation with fine-grained scales, the FP8 linear layer and the accumulation model (notebook 10).
- ``checks``: the exercise checkers, one ``check_<exercise>`` per exercise; ``formatting`` and ``diagrams``: how
  kept outputs print numbers, and the notebooks' diagrams.
- ``make_notebooks``: generates the learner notebooks in notebooks/ from solutions/; ``doctor``:
  ``python -m course_lib.machinery.doctor`` checks that this machine can run the course; ``notebook_costs``: each notebook's
  measured time and peak memory (docs/notebook_costs.json, written by tools/measure_notebooks.py).
"""

from course_lib.core.runtime import get_device, seed_everything

__all__ = ["get_device", "seed_everything"]
__version__ = "0.1.0"
