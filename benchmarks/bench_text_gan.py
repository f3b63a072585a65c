"""One RelGAN adversarial step on the synthetic-oracle setup: gencore's fused ops vs the same
model on PyTorch built-ins.

The step (TextGANTask.adversarial_step): a generator rollout of 20 Gumbel-softmax samples over a
5000-token vocabulary at batch 64 (LSTM 32/32, the oracle's size), the CNN discriminator on real
and soft fake one-hots, the discriminator loss, backward, Adam step, then the generator loss
through the relaxation, backward, Adam step. Implementations:
- "fused": gencore.ops.gumbel_softmax and gencore.ops.gan_loss (impl="fused");
- "reference": gencore's pure-PyTorch references of the same ops;
- "torch": F.gumbel_softmax and the losses composed from F.logsigmoid /
  F.binary_cross_entropy_with_logits, everything else identical.

    OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_text_gan.py -q --benchmark-json tg.json
    python benchmarks/report.py tg.json --markdown
"""
import pytest
import torch
import torch.nn.functional as F

from gencore.models import CNNDiscriminator, OracleLSTM, TextGenerator
from gencore.train.tasks import TextGANTask

BATCH, VOCAB, LENGTH = 64, 5000, 20


class BuiltinGenerator(TextGenerator):
    def gumbel_softmax(self, logits, tau, generator):
        return F.gumbel_softmax(logits, tau=tau)


class BuiltinTask(TextGANTask):
    """rsgan (RelGAN's default) composed from PyTorch built-ins."""

    def d_loss(self, real_logits, fake_logits):
        return F.binary_cross_entropy_with_logits(real_logits - fake_logits,
                                                  torch.ones_like(real_logits))

    def g_loss(self, real_logits, fake_logits):
        return -F.logsigmoid(fake_logits - real_logits).mean()


def make_step(impl):
    oracle = OracleLSTM(VOCAB, 32, 32, LENGTH, seed=0)
    torch.manual_seed(0)
    gen_cls, task_cls = (BuiltinGenerator, BuiltinTask) if impl == "torch" else (TextGenerator, TextGANTask)
    gen = gen_cls(VOCAB, 32, 32, LENGTH, impl="fused" if impl == "torch" else impl)
    disc = CNNDiscriminator(VOCAB, LENGTH)
    task = task_cls(oracle, gen, disc, total_steps=1000, mle_steps=0, loss="rsgan",
                    beta_max=100.0, impl="fused" if impl == "torch" else impl)
    task.temperature.position = 500  # mid-schedule temperature
    opts = task.configure_optimizers()

    def optimizer_step(name, loss):
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    real = oracle.sample(BATCH, torch.Generator().manual_seed(1))
    return lambda: task.adversarial_step(real, optimizer_step)


IMPLS = ["fused", "reference", "torch"]


@pytest.mark.parametrize("impl", IMPLS)
def test_adversarial_step(compare, impl):
    compare(f"textgan adversarial step (D+G) b{BATCH} L{LENGTH} V{VOCAB}", impl,
            lambda: {name: make_step(name) for name in IMPLS}, min_time=2.0, min_reps=10)
