"""ctseg: GAN segmentors trained from slice stores (``ctseg models | train | predict | evaluate``).

Modules, each importing only those listed before it (no import circles): errors; config
(TrainConfig, a leaf of dataclasses); metrics, image_quality, report, evaluate (numpy
only: scoring stored predictions); checkpoint (the file format); data (Dataset,
samplers); models/ (registry and catalogue, base, one file per model); build (the model
registry complete, build_config, build_model, load_model); predict; train (the one loop);
score (soft-mask and super-resolution scores of trained models); cli. torch is imported
by data, models, build, train and inside functions, never here.
"""
