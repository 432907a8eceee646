"""The simulator: the real scheduler on a virtual clock, priced by a cost model (no torch)."""
