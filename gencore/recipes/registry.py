"""The recipes `gencore train` knows, by name, and their settings with `--set key=value`
overrides applied (gencore._settings parses them)."""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .. import _settings
from .base import Recipe, RecipeSettings

__all__ = ["get_recipe", "recipe_names", "register", "resolve_settings"]

# Modules that define `RECIPES`, in the order `gencore demo` runs them.
_MODULES: Sequence[str] = ("gpt", "vae", "gan", "textgan")
_REGISTRY: Dict[str, Recipe] = {}
_LOADED = False


def register(recipe: Recipe) -> Recipe:
    """Adds a recipe (yours, or gencore's own) under `recipe.name`."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register: expected a gencore.recipes.Recipe, got {type(recipe).__name__}")
    _settings.specs(recipe.settings)  # every setting name once in the tree
    resolve_settings(recipe, demo=True)  # the demo overrides name settings
    _REGISTRY[recipe.name] = recipe
    return recipe


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in _MODULES:
            for r in importlib.import_module(f"{__package__}.{mod}").RECIPES:
                register(r)


def recipe_names() -> List[str]:
    _load()
    return list(_REGISTRY)


def get_recipe(name: str) -> Recipe:
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(_REGISTRY) or '(none)'}")
    return _REGISTRY[name]


def resolve_settings(recipe: Recipe, overrides: Optional[Mapping[str, Any]] = None,
                     demo: bool = False) -> RecipeSettings:
    """The recipe's settings (its default instance), then its demo overrides (when `demo`), then
    `overrides` (setting name -> value; strings as typed on the command line are parsed into the
    setting's type). Unknown names and bad values raise ValueError naming the setting, the value
    and what is valid."""
    who = f"recipe {recipe.name!r}: "
    settings = recipe.settings
    for layer in ([recipe.demo] if demo else []) + [overrides or {}]:
        settings = _settings.apply(settings, layer, who)
    return settings
