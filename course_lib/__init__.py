"""Companion package of the hands-on course on DeepSeek-V3's training ideas.

Each module holds one idea and is the single implementation that the notebooks, the tests and the
tiny model share:

- ``runtime``: the device helper (``get_device``) and the seeding helper (``seed_everything``).
- ``facts``: the numbers the course cites, with their sources.
- ``compute`` and ``param_count``: training compute, GPU utilisation, parameter counts (notebook 00).
- ``checks``: the exercise checkers, one ``check_<exercise>`` per exercise.
- ``make_notebooks``: generates the learner notebooks in notebooks/ from solutions/.
- ``doctor``: ``python -m course_lib.doctor`` checks that this machine can run the course.
"""

from course_lib.runtime import get_device, seed_everything

__all__ = ["get_device", "seed_everything"]
__version__ = "0.1.0"
