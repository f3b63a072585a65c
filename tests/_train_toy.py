"""A training script for the tests: runs alone or under torchrun (DDP), can be killed and resumed.

    python tests/_train_toy.py OUT --steps 40 --ckpt-every 5 [--resume] [--sleep 0.05]

Under torchrun a restart (TORCHELASTIC_RESTART_COUNT > 0) resumes; `--kill-at STEP` makes the last
rank SIGKILL itself at that step of the first attempt. Stopped by SIGTERM it exits with status 75.
"""
import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from _toy import lm_setup  # noqa: E402
from gencore.train import STOPPED_EXIT_STATUS, Trainer, TrainerConfig, distributed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ckpt-every", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--kill-at", type=int, default=None)
    args = ap.parse_args()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    torch.set_num_threads(1)
    threads_before = _threads()  # before the process group exists
    task, train, val = lm_setup(batch=args.batch)
    task.model.drop.p = args.dropout
    inner = task.training_step
    last_rank = int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1

    def step_fn(batch, step):
        if args.kill_at is not None and step == args.kill_at and restart == 0 and last_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.sleep:
            time.sleep(args.sleep)
        return inner(batch, step)
    task.training_step = step_fn
    cfg = TrainerConfig(max_steps=args.steps, out_dir=args.out, ckpt_every=args.ckpt_every,
                        keep_last=3, val_every=10, sample_every=20, log_every=5, warmup_steps=5,
                        grad_accum=args.accum, resume=args.resume or restart > 0,
                        progress="lines", ema_decay=0.9, seed=0)
    res = Trainer(task, cfg, train, val).fit(stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:
        print("STOPPED" if res["stopped_by"] else "DONE", res["step"], flush=True)
    if distributed.is_distributed():
        # Leaving the group must end its worker threads: threads left into interpreter shutdown
        # can abort the process there (see gencore.train.distributed.init).
        rank = distributed.rank()
        distributed.shutdown()
        print(f"rank {rank} threads left by the process group: "
              f"{_threads() - threads_before}", flush=True)
    if res["stopped_by"]:
        sys.exit(STOPPED_EXIT_STATUS)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


if __name__ == "__main__":
    main()
