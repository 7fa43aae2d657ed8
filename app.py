"""Gaussian Dreamer Studio: `python app.py --help`."""

import os
import sys

# OpenMP threads that spin while waiting make the CPU renderer several times slower on a busy machine;
# this must be set before torch is imported to take effect.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from studio.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
