"""Several ranks behind one engine: tensor-parallel ranks run every plan (and the start-up
profile) in lockstep."""
