"""The recipes `gencore train` knows, by name, and the parsing of `--set key=value` overrides."""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .base import Recipe

__all__ = ["get_recipe", "recipe_names", "register", "resolve_config"]

# Modules that define `RECIPES`, in the order `gencore demo` runs them.
_MODULES: Sequence[str] = ("gpt", "vae", "gan", "textgan")
_REGISTRY: Dict[str, Recipe] = {}
_LOADED = False


def register(recipe: Recipe) -> Recipe:
    """Adds a recipe (yours, or gencore's own) under `recipe.name`."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register: expected a gencore.recipes.Recipe, got {type(recipe).__name__}")
    for key in ("steps", "seed", "batch_size"):
        if key not in recipe.defaults:
            raise ValueError(f"recipe {recipe.name!r}: defaults must have {key!r}")
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


def _parse(recipe: Recipe, key: str, value: Any) -> Any:
    default = recipe.defaults[key]
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            if isinstance(default, bool):
                low = text.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = low in ("true", "1", "yes")
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
            elif default is None:
                value = None if text.lower() == "none" else text
        except ValueError:
            raise ValueError(f"recipe {recipe.name!r}: {key}={value!r} is not a valid "
                             f"{type(default).__name__} (default {default!r})") from None
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif default is not None and not isinstance(value, type(default)):
        raise ValueError(f"recipe {recipe.name!r}: {key} must be a {type(default).__name__}, "
                         f"got {value!r}")
    valid = recipe.choices.get(key)
    if valid is not None and value not in valid:
        raise ValueError(f"recipe {recipe.name!r}: {key}={value!r} is not valid; "
                         f"choose one of {list(valid)}")
    return value


def resolve_config(recipe: Recipe, overrides: Optional[Mapping[str, Any]] = None,
                   demo: bool = False) -> Dict[str, Any]:
    """The recipe's defaults, then its demo settings (when `demo`), then `overrides` (values may
    be strings as typed on the command line). Unknown keys and bad values raise ValueError
    listing what is valid."""
    config = dict(recipe.defaults)
    layers = ([recipe.demo] if demo else []) + [overrides or {}]
    for layer in layers:
        for key, value in layer.items():
            if key not in recipe.defaults:
                raise ValueError(f"recipe {recipe.name!r} has no setting {key!r}; valid settings: "
                                 f"{', '.join(sorted(recipe.defaults))}")
            config[key] = _parse(recipe, key, value)
    for key in ("steps", "batch_size"):
        if config[key] < 1:
            raise ValueError(f"recipe {recipe.name!r}: {key} must be >= 1, got {config[key]}")
    return config
