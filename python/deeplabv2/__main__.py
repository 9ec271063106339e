"""`python -m deeplabv2 ...` (and `torchrun -m deeplabv2 train ...`) = the `deeplabv2` command."""
import sys

from deeplabv2.cli import main

sys.exit(main())
