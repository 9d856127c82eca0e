"""One list of architectures, shared by the book, the CLI and the tests.

A model family registers a factory under a name ``family/model``::

    @register("resnet/resnet20")
    def resnet20(num_classes=10, in_channels=3, **kwargs):
        return CifarResNet(3, num_classes=num_classes, in_channels=in_channels)

and everyone else builds it by name: ``build("resnet/resnet20", num_classes=100)``.
"""

import difflib
import numbers
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


def _close_matches(name: str) -> list:
    """Registered names close to ``name``: one that differs only in case, else difflib's nearest."""
    same_but_case = [known for known in list_models() if known.lower() == name.lower()]
    return same_but_case or difflib.get_close_matches(name, list_models(), n=3, cutoff=0.6)


def unknown_model_message(name: str) -> str:
    """What ``build`` (and the training command line) says of a name that is not registered."""
    close = _close_matches(name)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown model {name!r}; {hint}choose one of: {', '.join(list_models())}"


def _check_count(value, argument: str) -> int:
    """``num_classes`` and ``in_channels`` are ints >= 1 (a NumPy integer counts as an int)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an int >= 1; got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{argument} must be an int >= 1; got {value}")
    return int(value)


def build(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the model registered as ``name``; extra keyword arguments go to its factory.

    An unknown name is a ``ValueError`` that suggests the closest registered names;
    ``num_classes`` (and ``in_channels``, when given) must be ints >= 1.
    """
    if not isinstance(name, str):
        raise TypeError(f"the model name must be a str such as 'resnet/resnet8'; got {type(name).__name__}")
    if name not in _FACTORIES:
        raise ValueError(unknown_model_message(name))
    num_classes = _check_count(num_classes, "num_classes")
    if "in_channels" in kwargs:
        kwargs["in_channels"] = _check_count(kwargs["in_channels"], "in_channels")
    return _FACTORIES[name](num_classes=num_classes, **kwargs)
