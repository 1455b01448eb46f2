"""Segmentation models, one file per registered name (``ctseg/models/<name>.py``, '-' as '_').

Adding a model: add its name and one-line description to ``registry.CATALOGUE``, write
``ctseg/models/<name>.py`` with a ``SegModel`` subclass decorated ``@register("<name>")``
and import the file in ``ctseg.build`` (``MODEL_MODULES``). The training loop,
checkpoints, AMP and DDP need nothing else. Shared pieces live in files that register
nothing: ``base`` (the interface), ``blocks``, ``losses``, ``prior``, and ``lgan`` (the
five LGAN critics' common model).

This package's ``__init__`` imports nothing, so the torch-free ``registry`` (the
catalogue ``ctseg models`` prints) can be imported without torch.
"""
