"""One list of architectures, shared by the book, the CLI and the tests.

A model family registers a factory under a name ``family/model``::

    @register("resnet/resnet20")
    def resnet20(num_classes=10, in_channels=3, **kwargs):
        return CifarResNet(3, num_classes=num_classes, in_channels=in_channels)

and everyone else builds it by name: ``build("resnet/resnet20", num_classes=100)``.
"""

from typing import Callable, Dict

import torch.nn as nn

_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory(num_classes=10, in_channels=3, **kwargs) -> nn.Module``
    under ``name``. A name can be registered once; a second registration raises ``ValueError``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorator


def list_models(prefix: str = "") -> list:
    """The registered names that start with ``prefix``, sorted."""
    return sorted(name for name in _FACTORIES if name.startswith(prefix))


def build(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the model registered as ``name``; extra keyword arguments go to its factory."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _FACTORIES[name](num_classes=num_classes, **kwargs)
