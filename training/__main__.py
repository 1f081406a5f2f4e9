"""`python -m training` is the same as `glasses-train`."""

import sys

from training.cli import main

sys.exit(main())
