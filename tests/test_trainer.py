"""Trainer: exact resume (in process and after kill -9), checkpoints, NaN guard, DDP, options."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _toy import TinyGANTask, lm_setup  # noqa: E402

from gencore.data import ImageBatches, digits  # noqa: E402
from gencore.train import (EMA, CheckpointError, CheckpointManager, NonFiniteLossError,  # noqa: E402
                           Trainer, TrainerConfig, WarmupDecay, load_checkpoint, save_checkpoint,
                           warmup_decay_factor)
from gencore.train.images import png_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "_train_toy.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(out, **kw):
    base = dict(max_steps=20, out_dir=str(out), log_every=5, warmup_steps=3, progress="none",
                ema_decay=0.9, val_every=10, sample_every=10)
    base.update(kw)
    return TrainerConfig(**base)


def _lm_trainer(out, **kw):
    task, train, val = lm_setup()
    return Trainer(task, _cfg(out, **kw), train, val, log=lambda m: None)


def _assert_state_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _final(out):
    steps = CheckpointManager(Path(out) / "checkpoints").list()
    return load_checkpoint(steps[-1][1])


def _learned(state):
    return {k: state[k] for k in ("modules", "optimizers", "schedulers", "ema", "data", "task", "rng")}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resume_in_process_bit_identical(tmp_path, precision):
    straight = _lm_trainer(tmp_path / "a", precision=precision)
    res = straight.fit()
    assert res["step"] == 20 and res["val"]["val_loss"] < 4.5
    half = _lm_trainer(tmp_path / "b", ckpt_every=5, precision=precision)
    half.fit(stop_after=10)
    assert half.step == 10
    resumed = _lm_trainer(tmp_path / "b", ckpt_every=5, resume=True, precision=precision)
    resumed.fit()
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    _assert_state_equal(_learned(a), _learned(b))
    if precision == "fp16":
        _assert_state_equal(a["scaler"], b["scaler"])
        assert a["scaler"]["_growth_tracker"] > 0
    assert b["task"]["samples_drawn"] == 2  # sampled at 10 (first run) and 20 (resumed run)
    # the log has each step's record once, in order
    recs = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in recs if r["event"] == "train"]
    assert train_steps == [5, 10, 15, 20]


def test_validation_and_sampling_do_not_change_training(tmp_path):
    # evaluation runs with the training RNG streams saved and restored: how often one validates
    # or samples cannot change the weights (dropout is on in this task)
    a = _lm_trainer(tmp_path / "a", val_every=2, sample_every=3)
    a.fit()
    b = _lm_trainer(tmp_path / "b", val_every=None, sample_every=None)
    b.fit()
    _assert_state_equal(_params(a), _params(b))


def test_kill9_resume_bit_identical(tmp_path):
    a, b = tmp_path / "straight", tmp_path / "killed"
    steps = 30
    subprocess.run([sys.executable, SCRIPT, a, "--steps", str(steps)], env=ENV, check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.Popen([sys.executable, SCRIPT, b, "--steps", str(steps), "--ckpt-every", "3",
                             "--sleep", "0.05"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    mgr = CheckpointManager(b / "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline:
        listed = mgr.list()
        if listed and listed[-1][0] >= steps // 2:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup, no atexit, mid-step
    proc.wait(timeout=30)
    killed_at = mgr.list()[-1][0]
    assert proc.returncode == -signal.SIGKILL and killed_at < steps
    out = subprocess.run([sys.executable, SCRIPT, b, "--steps", str(steps), "--ckpt-every", "3",
                          "--resume"], env=ENV, check=True, capture_output=True, text=True,
                         timeout=120)
    assert f"at step {killed_at}" in out.stdout
    _assert_state_equal(_learned(_final(a)), _learned(_final(b)))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-00000001.pt"
    save_checkpoint({"w": torch.ones(3), "step": 1}, path)
    before = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"w": torch.zeros(3), "step": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    # a temp file left by a SIGKILLed writer is neither listed nor kept
    (tmp_path / ".ckpt-00000002.pt.x.tmp").write_bytes(b"junk")
    mgr = CheckpointManager(tmp_path)
    assert [s for s, _ in mgr.list()] == [1]
    mgr.cleanup_temp()
    assert not list(tmp_path.glob("*.tmp"))
    # keep_last
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for s in (2, 3, 4):
        mgr.save({"step": s}, s)
    assert [s for s, _ in mgr.list()] == [3, 4]


def test_corrupt_and_truncated_checkpoints_fall_back(tmp_path):
    t = _lm_trainer(tmp_path, ckpt_every=4, keep_last=5)
    t.fit(stop_after=12)
    mgr = CheckpointManager(tmp_path / "checkpoints")
    (s4, p4), (s8, p8), (s12, p12) = mgr.list()
    data = p12.read_bytes()
    p12.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p12)
    # one flipped byte inside a tensor's data: caught by the digest (or by the zip reader)
    raw = bytearray(p8.read_bytes())
    good = torch.load(p8, weights_only=True)
    w = good["state"]["modules"]["model"]["out.weight"]
    needle = w.reshape(-1)[:4].numpy().tobytes()
    pos = bytes(raw).find(needle)
    assert pos > 0
    raw[pos] ^= 0x40
    p8.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p8)
    logs = []
    task, train, val = lm_setup()
    resumed = Trainer(task, _cfg(tmp_path, ckpt_every=4, resume=True), train, val, log=logs.append)
    resumed.setup()
    assert resumed.step == 4
    text = "\n".join(logs)
    assert "ckpt-00000012.pt" in text and "ckpt-00000008.pt" in text and "falling back" in text
    # all bad: a clear error, not a silent restart from step 0
    p4.write_bytes(b"")
    task, train, val = lm_setup()
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        Trainer(task, _cfg(tmp_path, resume=True), train, val, log=lambda m: None).setup()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_files_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "gencore-checkpoint", "x": _Evil()}, p)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(p)
    p2 = tmp_path / "plain.pkl"
    p2.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(p2)
    p3 = tmp_path / "other.pt"
    torch.save({"model": torch.ones(2)}, p3)
    with pytest.raises(CheckpointError, match="not a gencore checkpoint"):
        load_checkpoint(p3)
    with pytest.raises(TypeError, match="plain types"):
        save_checkpoint({"x": _Evil()}, tmp_path / "x.pt")


def _params(trainer):
    return {k: v.clone() for k, v in trainer.modules["model"].state_dict().items()}


def test_nan_guard_skip_and_stop(tmp_path):
    t = _lm_trainer(tmp_path / "skip")
    t.task.nan_at = {3}
    t.fit(stop_after=3)
    before = _params(t)
    opt_before = {k: v.clone() for k, v in t.optimizers["adam"].state_dict()["state"][0].items()}
    t.fit(stop_after=1)  # step index 3: NaN loss -> skipped
    assert t.step == 4 and t.nonfinite_skips == 1
    _assert_state_equal(before, _params(t))
    _assert_state_equal(opt_before, t.optimizers["adam"].state_dict()["state"][0])
    t.fit()
    assert all(torch.isfinite(v).all() for v in _params(t).values())
    assert any(r.get("event") == "nonfinite" for r in t.history)

    s = _lm_trainer(tmp_path / "stop", nonfinite="stop")
    s.task.nan_at = {2}
    s.fit(stop_after=2)
    before = _params(s)
    with pytest.raises(NonFiniteLossError, match=r"non-finite value at step 3.*not applied"):
        s.fit()
    _assert_state_equal(before, _params(s))

    r = _lm_trainer(tmp_path / "many", max_consecutive_skips=2)
    r.task.nan_at = set(range(100))
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        r.fit()


def test_gan_two_optimizers_exact_resume(tmp_path):
    d = digits()

    def run(out, **kw):
        torch.manual_seed(0)
        task = TinyGANTask()
        return Trainer(task, _cfg(out, max_steps=8, val_every=None, sample_every=4, **kw),
                       ImageBatches(d.train, 16, seed=0), log=lambda m: None)
    run(tmp_path / "a").fit()
    run(tmp_path / "b", ckpt_every=2).fit(stop_after=4)
    run(tmp_path / "b", ckpt_every=2, resume=True).fit()
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    _assert_state_equal(_learned(a), _learned(b))
    assert set(a["optimizers"]) == {"g", "d"} and set(a["ema"]) == {"G"}
    assert a["task"]["tau_step"] == 8
    png = tmp_path / "a" / "samples" / "step-00000008.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Several processes (DDP, FSDP2, DCP resume across world sizes, SIGTERM, SIGKILL + torchrun
# restarts, two nodes): tests/test_distributed.py.


def test_grad_accum_matches_bigger_batch(tmp_path):
    def run(out, batch, accum):
        task, train, val = lm_setup(batch=batch)
        task.model.drop.p = 0.0
        t = Trainer(task, _cfg(out, max_steps=6, grad_accum=accum, ema_decay=None), train, val,
                    log=lambda m: None)
        t.fit()
        return _params(t)
    a, b = run(tmp_path / "a", 8, 1), run(tmp_path / "b", 4, 2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains(tmp_path):
    t = _lm_trainer(tmp_path, precision="bf16", max_steps=30, val_every=30)
    res = t.fit()
    assert res["val"]["val_loss"] < 4.3


def test_config_errors_list_valid_values(tmp_path):
    with pytest.raises(ValueError, match=r"precision='fp8'.*\['fp32', 'bf16', 'fp16', 'auto'\]"):
        TrainerConfig(max_steps=1, precision="fp8").validate()
    with pytest.raises(ValueError, match="nonfinite"):
        TrainerConfig(max_steps=1, nonfinite="ignore").validate()
    with pytest.raises(ValueError, match="max_steps"):
        TrainerConfig(max_steps=0).validate()
    task, train, val = lm_setup()
    with pytest.raises(ValueError, match="must not share parameters"):
        task.configure_optimizers = lambda: {"a": torch.optim.SGD(task.model.parameters(), 0.1),
                                             "b": torch.optim.SGD(task.model.parameters(), 0.1)}
        Trainer(task, TrainerConfig(max_steps=1), train).setup()


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    _lm_trainer(tmp_path, max_steps=3).fit()
    with pytest.raises(FileExistsError, match="resume=True"):
        _lm_trainer(tmp_path, max_steps=3).setup()


def test_schedule_and_ema():
    assert warmup_decay_factor(0, 4, 20) == 0.25
    assert warmup_decay_factor(3, 4, 20) == 1.0
    assert warmup_decay_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert warmup_decay_factor(12, 4, 20, 0.0) == pytest.approx(0.5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = WarmupDecay(opt, 2, 10)
    assert opt.param_groups[0]["lr"] == 0.5
    opt.step()
    sch.step()
    assert opt.param_groups[0]["lr"] == 1.0
    m = torch.nn.Linear(1, 1, bias=False)
    e = EMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    w0 = e.module.weight.item()
    e.update(m)
    assert e.module.weight.item() == pytest.approx(0.5 * w0 + 0.5)


def test_linear_and_warmup_stable_decay_schedules(tmp_path):
    f = lambda step, **kw: warmup_decay_factor(step, 10, 110, **kw)  # noqa: E731
    # Linear decay to min_ratio straight after warmup.
    assert [f(s, min_ratio=0.0, shape="linear") for s in (10, 35, 60, 110, 200)] == \
        pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    # WSD: flat until the last 20% of the 100 post-warmup steps, then down to min_ratio.
    wsd = [f(s, min_ratio=0.1, shape="linear", decay_frac=0.2) for s in (10, 60, 90, 100, 110)]
    assert wsd == pytest.approx([1.0, 1.0, 1.0, 0.55, 0.1])
    assert f(100, min_ratio=0.0, decay_frac=0.2) == pytest.approx(0.5)  # cosine half way down
    assert f(50, decay_frac=0.0) == 1.0  # no decay at all
    with pytest.raises(ValueError, match="shape must be one of"):
        WarmupDecay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0, 10, shape="step")
    # The Trainer builds it from its config and logs the learning rate it used.
    tr = _lm_trainer(tmp_path, max_steps=20, warmup_steps=0, lr_schedule="linear", decay_frac=0.5,
                     min_lr_ratio=0.0, log_every=1, val_every=None, sample_every=None)
    tr.fit()
    lrs = [r["lr"] / tr.optimizers["adam"].param_groups[0]["initial_lr"]
           for r in tr.history if r["event"] == "train"]
    assert lrs[:10] == pytest.approx([1.0] * 10) and lrs[-5:] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])
    with pytest.raises(ValueError, match="decay_frac must be in"):
        TrainerConfig(max_steps=5, decay_frac=1.5).validate()


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4, 6), (4, 6)])
def test_png_round_trip(shape):
    """Pillow reads back exactly the 8-bit pixels: (C, H, W) grey or RGB, or (H, W)."""
    import io

    import numpy as np
    from PIL import Image
    img = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1  # clamped
    back = np.array(Image.open(io.BytesIO(png_bytes(img))))
    want = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    want = want.permute(1, 2, 0) if len(shape) == 3 and shape[0] == 3 else want.reshape(back.shape)
    assert np.array_equal(back, want.numpy())
    with pytest.raises(ValueError, match="1 or 3 channels, got shape \\(2, 3, 3\\)"):
        png_bytes(torch.rand(2, 3, 3))


@pytest.mark.parametrize("progress", ["lines", "auto"])  # auto: captured output is no terminal
def test_progress_lines_when_not_a_tty(capsys, progress):
    task, train, val = lm_setup()
    Trainer(task, TrainerConfig(max_steps=10, log_every=5, progress=progress), train).fit()
    cap = capsys.readouterr()
    assert "step 5/10" in cap.out and "step 10/10" in cap.out and "it/s" in cap.out
    assert cap.err == ""


def test_progress_bar_is_tqdm_and_log_lines_stay_whole(capsys):
    task, train, val = lm_setup()
    Trainer(task, TrainerConfig(max_steps=10, log_every=5, val_every=5, progress="bar"), train,
            val).fit()
    cap = capsys.readouterr()
    assert "10/10" in cap.err and "step/s" in cap.err and "loss" in cap.err  # tqdm's bar, postfix
    val_lines = [line for line in cap.out.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in val_lines] == ["step 5", "step 10"], cap.out
    assert "step 5/10" not in cap.out  # no per-interval lines beside the bar


class _SparseLogTask(TinyGANTask):
    """Logs 'r1' on every 4th step only (a lazy regulariser)."""

    def training_step(self, batch, step):
        out = super().training_step(batch, step)
        if step % 4 == 0:
            out["r1"] = 8.0
        return out


def test_log_averages_each_key_over_the_steps_that_logged_it(tmp_path):
    torch.manual_seed(0)
    data = ImageBatches(digits().train, 16, seed=0)
    Trainer(_SparseLogTask(), _cfg(tmp_path, max_steps=8, log_every=8), data).fit()
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["event"] == "train"]
    assert train[-1]["r1"] == 8.0  # not 8 * 2/8
