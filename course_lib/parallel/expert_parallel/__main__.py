"""``python -m course_lib.parallel.expert_parallel`` (under torchrun): the command line of ``cli``."""

import sys

from course_lib.parallel.expert_parallel.cli import main

if __name__ == "__main__":
    sys.exit(main())
