"""Training the tiny model (notebooks 05-06): its data (``data``) and the training step, loop, checkpoints and
command line (``python -m course_lib.training``).
"""
