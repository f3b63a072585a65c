"""Trains a recipe for settings.steps steps on the CPU through gencore.recipes.build_run (what
`gencore train` uses), keeping the Trainer (for the recipe smoke and resume tests)."""
import torch

from gencore.recipes import build_run, resolve_settings


def train_recipe_briefly(recipe, overrides, out_dir, stop_after=None, **trainer_options):
    settings = resolve_settings(recipe, overrides)
    plan, trainer = build_run(recipe, settings, log=lambda m: None, out_dir=str(out_dir),
                              progress="none", **trainer_options)
    trainer.fit(stop_after=stop_after)
    return plan, trainer


def assert_resume_is_exact(recipe, overrides, tmp_path):
    """6 steps in one go == 3 steps, a checkpoint, a fresh process-like rebuild, 3 more steps:
    every module's weights (EMA copies included) bit for bit."""
    _, straight = train_recipe_briefly(recipe, overrides, tmp_path / "a")
    train_recipe_briefly(recipe, overrides, tmp_path / "b", stop_after=3, ckpt_every=3)
    _, resumed = train_recipe_briefly(recipe, overrides, tmp_path / "b", resume=True, ckpt_every=3)
    assert resumed.step == straight.step == overrides["steps"]
    for name, m in straight.modules.items():
        for (k, a), b in zip(m.state_dict().items(), resumed.modules[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k} differs after resume"
    for name, e in straight.ema.items():
        for a, b in zip(e.module.state_dict().values(), resumed.ema[name].module.state_dict().values()):
            assert torch.equal(a, b), f"EMA of {name} differs after resume"
