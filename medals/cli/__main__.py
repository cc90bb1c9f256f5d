"""`python -m medals.cli …`: the same command line as `medals …` (what the Slicer launcher and torchrun call)."""
import sys

from . import main

sys.exit(main())
