"""Every architecture of the book, built by name: ``build("resnet/resnet20", num_classes=10)``."""

from effconv_ref.models.registry import build, list_models, register
from effconv_ref.models import resnet  # noqa: F401  (registers its models)
from effconv_ref.models import lowcost  # noqa: F401
from effconv_ref.models import lean  # noqa: F401
from effconv_ref.models import lean_baselines  # noqa: F401
from effconv_ref.models import secl  # noqa: F401
from effconv_ref.models import factorized  # noqa: F401

__all__ = ["build", "list_models", "register"]
