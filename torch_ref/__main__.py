"""`python -m nn_parity.torch_ref` is the `nn-parity` command."""

import sys

from nn_parity.torch_ref.frontends.cli import main

sys.exit(main())
