"""``python -m course_lib.training ...``: train the tiny model from the command line (``cli.main``)."""

import sys

from course_lib.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
