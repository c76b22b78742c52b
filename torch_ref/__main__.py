"""`python -m nn_parity.torch_ref` is the `nn-parity` command."""

import sys

from .cli import main

sys.exit(main())
