"""Training the tiny model (notebooks 05-06): its data (``data``), one training step (``step``), the run's settings
and record (``config``), the loop (``loop``), checkpoints (``checkpoint``) and the command line (``cli``:
``python -m course_lib.training``), DeepSeek Sparse Attention's two training stages (``sparse_attention``, notebook
15); the checks at these boundaries in ``arguments``.
"""
