"""Segmentation models, one file each, registered by name (``MODELS``).

Adding a model: write ``ctseg/models/<name>.py`` with a ``SegModel`` subclass decorated
``@register("<name>")`` and add its module to the import below. The training loop,
checkpoints, AMP and DDP need nothing else.
"""

from ctseg.models.registry import MODELS, get_model, register

# Every model module, imported explicitly so that each registers itself (no reflection).
from ctseg.models import ctumorgan, segan, unet  # noqa: E402
from ctseg.models import crgan, lgan  # noqa: E402
from ctseg.models import srgan, softgan  # noqa: E402

MODEL_MODULES = (unet, ctumorgan, segan, crgan, lgan, srgan, softgan)

__all__ = ["MODELS", "MODEL_MODULES", "get_model", "register"]
