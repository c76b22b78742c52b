"""The front ends: the `nn-parity` command, the pytest plugin and the notebook display."""
