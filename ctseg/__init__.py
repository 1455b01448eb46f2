"""ctseg: GAN segmentors trained from slice stores (``ctseg models | train | predict | evaluate``).

Modules: config (TrainConfig), data (Dataset, samplers), models/ (registry, one file per
model), train (the one loop), predict, checkpoint; torch is imported by those, not here.
"""
