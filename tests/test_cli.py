"""The command line: every verb, resume, the report, and the errors for bad recipes/settings."""
import json
import math

import pytest
import torch

from _toy import toy_recipe
from gencore import cli
from gencore.recipes import get_recipe, register, resolve_settings
from gencore.train import load_checkpoint

register(toy_recipe())


def run(*argv):
    return cli.main([str(a) for a in argv])


def test_train_writes_a_complete_run_dir(tmp_path, capsys):
    out = tmp_path / "r"
    assert run("train", "toy-char", "--out", out, "--progress", "none", "--set", "lr=0.01") == 0
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"] == "toy-char" and info["settings"]["lr"] == 0.01
    res = json.loads((out / "results.json").read_text())
    for what in (info, res):  # every result traceable to its code, torch, device and command
        p = what["provenance"]
        assert len(p["commit"]) == 40 and isinstance(p["dirty"], bool), p
        assert p["torch"] == torch.__version__ and p["device"] == "cpu" and p["cpu_isa"]
        assert "train toy-char" in p["command"] or "pytest" in p["command"]
    assert res["steps"] == 10 and set(res["metrics"]) == {"val_nll", "val_nll_floor"}
    assert (out / res["samples"]).read_text().strip()
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "ckpt-00000010.pt"
    assert "val_nll" in capsys.readouterr().out


def test_resume_extends_a_finished_run(tmp_path, capsys):
    # Exact resume after a kill is tested in test_trainer.py; here: the CLI continues the run
    # from its newest checkpoint with the settings in run.json.
    out = tmp_path / "r"
    assert run("train", "toy-char", "--out", out, "--progress", "none", "--steps", 10) == 0
    capsys.readouterr()
    assert run("train", "toy-char", "--out", out, "--progress", "none", "--steps", 15, "--resume") == 0
    assert "ckpt-00000010.pt at step 10" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["steps"] == 15
    assert load_checkpoint(out / "checkpoints" / "ckpt-00000015.pt")["trainer"]["step"] == 15


def test_sample_from_a_run(tmp_path, capsys):
    out = tmp_path / "r"
    run("train", "toy-char", "--out", out, "--progress", "none", "--steps", 5)
    capsys.readouterr()
    assert run("sample", out, "--n", 2, "--seed", 1) == 0
    first = capsys.readouterr().out
    assert first.strip()
    run("sample", out, "--n", 2, "--seed", 1)
    assert capsys.readouterr().out == first  # seeded: repeats
    run("sample", out, "--n", 2, "--seed", 2)
    assert capsys.readouterr().out != first
    assert run("sample", out, "--n", 1, "--out", tmp_path / "s.txt") == 0
    assert (tmp_path / "s.txt").read_text().strip()


def test_demo_writes_report_with_every_section(tmp_path, capsys):
    assert run("demo", "--only", "toy-char", "--out", tmp_path, "--progress", "none") == 0
    demo, = tmp_path.glob("demo-*")  # the demo's own new folder
    html = (demo / "report.html").read_text()
    for part in ('id="summary"', 'id="run-toy-char"', "Loss curves", "<svg", "<polyline",
                 "Metrics", "floor (real data", "Samples", "<pre>", "commit ", "command: "):
        assert part in html, part
    assert json.loads((demo / "toy-char" / "results.json").read_text())["steps"] == 6
    assert str((demo / "report.html").resolve()) in capsys.readouterr().out
    # a second demo goes to a folder of its own too
    assert run("demo", "--only", "toy-char", "--out", tmp_path, "--progress", "none", "--steps", 3) == 0
    assert len(list(tmp_path.glob("demo-*"))) == 2
    assert json.loads((demo / "toy-char" / "results.json").read_text())["steps"] == 6


def test_demo_never_touches_existing_runs(tmp_path, capsys):
    """`gencore train X --out runs/X` then `gencore demo --out runs`: the run stays as it was."""
    runs = tmp_path / "runs"
    mine = runs / "toy-char"
    assert run("train", "toy-char", "--out", mine, "--progress", "none") == 0
    before = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    assert run("demo", "--only", "toy-char", "--out", runs, "--progress", "none", "--steps", 3) == 0
    after = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    assert after == before
    demo, = runs.glob("demo-*")
    assert json.loads((demo / "toy-char" / "results.json").read_text())["steps"] == 3


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "valid recipes: "),
    (["train", "toy-char", "--set", "wrong=1"], "valid settings: batch_size, block, ckpt_every, decay_frac"),
    (["train", "toy-char", "--set", "lr=fast"], "is not a valid float"),
    (["train", "toy-char", "--set", "mode=c"], "choose one of ['a', 'b']"),
    (["train", "toy-char", "--set", "lr"], "expects key=value"),
    (["train", "toy-char", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["sample", "/nonexistent/run"], "not a gencore run directory"),
    (["demo", "--only", "nope"], "valid recipes: "),
])
def test_bad_input_names_what_is_valid(argv, message, capsys, tmp_path):
    assert run(*argv, *(["--out", tmp_path / "x"] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "gpt-text", "--set", "lr=abc"], "lr='abc' is not a valid float; expected float"),
    (["train", "gpt-text", "--set", "n_layer=0"], "n_layer must be a positive integer, got 0"),
    (["train", "gpt-text", "--set", "top_k=0"], "top_k must be"),
    (["train", "gpt-text", "--set", "precision=fp64"], "choose one of ['fp32', 'bf16', 'fp16', 'auto']"),
    (["train", "gan-digits", "--set", "ema_decay=0"], "ema_decay must be None (no EMA) or in (0, 1)"),
    (["train", "vae-digits", "--set", "grad_clip=0"], "grad_clip must be None or > 0"),
])
def test_bad_gpt_settings_fail_before_training(argv, message, capsys, tmp_path):
    assert run(*argv, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("recipe", ["toy-char", "gpt-text", "gpt-code", "vae-digits",
                                    "gan-digits", "textgan-oracle"])
def test_recipe_help_lists_settings_with_types_and_defaults(recipe, capsys):
    assert run("train", recipe, "--help") == 0
    out = capsys.readouterr().out
    from gencore import _settings
    for name, spec in _settings.specs(get_recipe(recipe).settings).items():
        default = "none" if spec.value is None else spec.value
        assert f"  {name}={default} (" in out, name
    assert "steps=" in out and "(int)" in out and "grad_clip=" in out


@pytest.mark.parametrize("recipe", ["toy-char", "gpt-text", "gpt-code", "vae-digits",
                                    "gan-digits", "textgan-oracle"])
def test_settings_round_trip_through_json(recipe):
    """run.json's settings, read back (as --resume and sample do), are the same typed settings."""
    from gencore import _settings
    r = get_recipe(recipe)
    changed = resolve_settings(r, {"steps": "7", "grad_clip": "none", "seed": "3"})
    back = resolve_settings(r, json.loads(json.dumps(_settings.flat(changed))))
    assert back == changed and back.trainer.grad_clip is None and back.steps == 7


def test_existing_run_needs_resume_and_same_settings(tmp_path, capsys):
    out = tmp_path / "r"
    run("train", "toy-char", "--out", out, "--progress", "none", "--steps", 5)
    assert run("train", "toy-char", "--out", out, "--progress", "none") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert run("train", "toy-char", "--out", out, "--resume", "--set", "lr=0.5") == 2
    assert "only steps, parallel may change" in capsys.readouterr().err


def test_resolve_settings_types():
    r = get_recipe("toy-char")
    s = resolve_settings(r, {"lr": "1e-2", "block": "8", "steps": 3, "grad_clip": "none"})
    assert s.lr == 0.01 and isinstance(s.lr, float) and s.block == 8 and s.steps == 3
    assert s.trainer.grad_clip is None and s.trainer.val_every == 5  # the recipe's TrainerConfig
    assert resolve_settings(r, demo=True).steps == 6
    with pytest.raises(ValueError, match="block=2.5 is not an int"):
        resolve_settings(r, {"block": 2.5})


# Every gencore recipe through the real command (a subprocess, as a user runs it), tiny settings.
TINY = {
    "gpt-text": ["n_layer=1", "n_head=2", "n_embd=32", "block_size=16", "batch_size=4",
                 "val_every=2", "val_batches=2", "eval_batches=2", "sample_tokens=20",
                 "warmup_steps=1"],
    "gpt-code": ["n_layer=1", "n_head=2", "n_embd=32", "block_size=16", "batch_size=4",
                 "val_every=2", "val_batches=2", "eval_batches=2", "sample_tokens=20",
                 "warmup_steps=1", "tokenizer=byte"],
    "vae-digits": ["width=8", "latent=4", "batch_size=8", "nll_k=4", "prior_components=4"],
    "gan-digits": ["width=8", "latent=4", "batch_size=8"],
    "textgan-oracle": ["mle_steps=1", "vocab_size=50", "seq_len=6", "batch_size=8",
                       "eval_samples=20", "frontier_samples=20"],
}


def test_bench_runs_the_suites_and_prints_ratios(tmp_path, capfd):
    """`gencore bench` finds the bench_*.py suites (pytest alone collects only test_*.py) and
    prints one row per implementation; a -k that selects nothing is an error."""
    bench = ["bench", "--device", "cpu", "--json"]  # the decoding benchmarks time the CPU
    assert run(*bench, tmp_path / "b.json", "-k", "decode and 1x4x256x32") == 0
    rows = [l for l in capfd.readouterr().out.splitlines() if l.startswith("attention decode")]
    assert [r.split()[-3] for r in rows] == ["fused", "reference", "torch"], rows
    assert json.loads((tmp_path / "b.json").read_text())["benchmarks"]
    assert run(*bench, tmp_path / "c.json", "-k", "no_such_benchmark") == 2
    assert "no benchmark matches -k 'no_such_benchmark' on cpu" in capfd.readouterr().err


def _numbers(metrics):
    """Every number in a results.json's metrics (frontiers: lists of points, flattened)."""
    for v in metrics.values():
        if isinstance(v, list):
            yield from (x for p in v for x in p.values())
        else:
            yield v


def test_report_draws_text_gan_frontiers(tmp_path):
    """A text-GAN run's section plots its frontier with the MLE-only curve beside it: its own
    frontier_mle, or another run directory of the report with mle_steps == steps."""
    from gencore.report import render_report

    def frontier(shift):
        return [{"temperature": t, "nll_oracle": 7 + t + shift, "nll_div": 5 + 2 * t}
                for t in (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)]

    def run_dir(name, mle_steps, metrics):
        d = tmp_path / name
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"recipe": "textgan-oracle", "settings": {
            "steps": 12, "mle_steps": mle_steps, "seed": 0, "oracle_seed": 0}}))
        (d / "results.json").write_text(json.dumps({"steps": 12, "train_seconds": 1.0, "metrics": {
            "nll_oracle": 8.0, "nll_div": 7.0, "nll_oracle_floor": 5.85, **metrics}}))
        return d
    both = run_dir("both", 10, {"frontier": frontier(0), "frontier_mle": frontier(0.5)})
    adv = run_dir("adv", 10, {"frontier": frontier(0)})
    mle = run_dir("mle", 12, {"frontier": frontier(0.5)})
    html = render_report([both])
    assert html.count("quality-diversity frontier") == 1 and "frontier_mle" in html
    assert "T0.7" in html and "T1.5" in html and "oracle floor" in html
    html = render_report([adv, mle])
    assert "MLE only (mle)" in html  # adv's chart found the other run
    assert "Traceback" not in html and "[{" not in html  # the lists are not printed as metrics


def _gencore(*argv, timeout=300):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "gencore", *map(str, argv)], capture_output=True,
                         text=True, timeout=timeout, env={**__import__("os").environ,
                                                          "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("recipe", list(TINY))
def test_every_recipe_trains_resumes_and_samples(recipe, tmp_path):
    out = tmp_path / recipe
    _gencore("train", recipe, "--steps", 2, "--out", out, "--progress", "none", "--set", *TINY[recipe])
    _gencore("train", recipe, "--steps", 3, "--out", out, "--progress", "none", "--resume")
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and res["metrics"] and all(map(math.isfinite, _numbers(res["metrics"])))
    for what in (json.loads((out / "run.json").read_text()), res):  # traceable to its code
        assert len(what["provenance"]["commit"]) == 40 and what["provenance"]["dirty"] in (True, False)
        assert what["provenance"]["command"].startswith("gencore train " + recipe)
    if recipe == "textgan-oracle":  # the temperature frontiers, both arms
        for key in ("frontier", "frontier_mle"):
            assert [p["temperature"] for p in res["metrics"][key]] == [0.7, 0.8, 0.9, 1.0, 1.1,
                                                                       1.25, 1.5]
    text = _gencore("sample", out, "--n", 2, *(["--prompt", "def "] if recipe.startswith("gpt") else []))
    if (out / res["samples"]).suffix == ".png":
        assert text.strip().endswith(".png")
    else:
        assert text.strip()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["gan-digits", "textgan-oracle"])
def test_gan_recipe_under_torchrun(recipe, tmp_path):
    """`torchrun --nproc_per_node=2 -m gencore train ...` of a GAN (several modules and
    optimizers: gradients averaged after each optimizer's backward, see Parallel): one process
    writes, both train. (gpt-text under
    DDP and FSDP2: tests/test_distributed.py.)"""
    import subprocess
    import sys
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "gencore", "train", recipe, "--steps", "3", "--out", str(out),
         "--progress", "none", "--set", *TINY[recipe]],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(f"{recipe}: 3 steps") == 1  # the main process reports
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 3
    assert all(map(math.isfinite, _numbers(res["metrics"])))
