"""How a config names its implementation, so that every registry is derived from its section's union.

Each section of a run spec (``algorithm:``, ``model:``, ``data:``) is a discriminated union of
:class:`Named` configs. A config says which function or class builds from it, as an import path
``"module:attribute"`` in :attr:`Named.factory`, and whether it belongs to the online protocol
(:attr:`Named.online`). The registries of the implementations (:mod:`metacli.engine.algorithms`,
:mod:`metacli.engine.data`, :mod:`metacli.engine.models`) are :func:`factories` of the unions, so adding a
config to its union registers it: there is no second list of names to keep in step.

The path is a string, resolved only when a registry is built (:func:`resolve`), so that this module and
the config modules stay importable without torch: a spec validates in a fraction of a second.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Named(BaseModel):
    """A section's config: frozen, no unknown field, selected in its union by a ``name: Literal[...]``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    factory: ClassVar[str]
    """``"module:attribute"``: the function or class that builds from this config (imported lazily)."""
    online: ClassVar[bool] = False
    """Whether it belongs to the online protocol (task streams, MOML and its baselines)."""


def members(union: object) -> tuple[type[Named], ...]:
    """The config classes of a discriminated union ``Annotated[A | B | ..., Field(discriminator=...)]``."""
    classes = typing.get_args(typing.get_args(union)[0])
    if not all(isinstance(c, type) and issubclass(c, Named) for c in classes):
        raise TypeError(f"every member of {union} must be a Named config")
    return classes


def name_of(cls: type[BaseModel]) -> str:
    """The ``name`` a config is selected by (its discriminator's default)."""
    return str(cls.model_fields["name"].default)


def online_names(union: object) -> frozenset[str]:
    """The names of the union's online configs."""
    return frozenset(name_of(c) for c in members(union) if c.online)


def resolve(path: str) -> Any:
    """The object at ``"module:attribute"``, importing the module (``Any``: each factory has its own type)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def factories(union: object, online: bool) -> dict[str, Any]:
    """``name -> factory`` for the union's configs of one protocol, in the union's order."""
    return {name_of(c): resolve(c.factory) for c in members(union) if c.online == online}
