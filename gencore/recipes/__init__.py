"""gencore.recipes: named training setups (data + model + task + trainer settings) that
`gencore train NAME` and `gencore demo` run, and the run directory they write.

    from gencore.recipes import train_recipe
    results = train_recipe("vae-digits", {"steps": 500}, out_dir="runs/vae")
"""
from .base import Recipe, RecipeSettings, RunPlan
from .registry import get_recipe, recipe_names, register, resolve_settings
from .run import RESULTS_FILE, RUN_FILE, build_run, load_run, save_samples, train_recipe

__all__ = ["Recipe", "RecipeSettings", "RunPlan", "get_recipe", "recipe_names", "register",
           "resolve_settings",
           "train_recipe", "build_run", "load_run", "save_samples", "RUN_FILE", "RESULTS_FILE"]
