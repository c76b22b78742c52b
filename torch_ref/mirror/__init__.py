"""The torch mirror: the module, weights both ways, the optimizer, and framework code for export."""
