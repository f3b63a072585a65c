"""Tiny tasks for the trainer tests (the real models plug in the same way)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gencore.data import LMBatches, LMEvalBatches, english_text
from gencore.train import Task


class CharMLP(nn.Module):
    """Predicts the next character from the last two (embeddings -> MLP, with dropout so the
    RNG state matters for exact resume)."""

    def __init__(self, vocab: int, emb: int = 16, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.fc = nn.Linear(2 * emb, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        prev = F.pad(x, (1, 0))[:, :-1]
        h = torch.cat([self.emb(x), self.emb(prev)], -1)
        return self.out(self.drop(torch.tanh(self.fc(h))))


class CharLMTask(Task):
    def __init__(self, vocab: int, tokenizer=None, lr: float = 3e-3):
        self.model = CharMLP(vocab)
        self.tokenizer = tokenizer
        self.lr = lr
        self.nan_at = set()  # steps at which the loss is forced to NaN (guard tests)
        self.samples_drawn = 0  # task state that must survive a resume

    def modules(self):
        return {"model": self.model}

    def configure_optimizers(self):
        return {"adam": torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.01)}

    def training_step(self, batch, step):
        x, y = batch
        logits = self.training_module("model")(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        if step in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}

    def validation_step(self, batch):
        x, y = batch
        logits = self.model(x)
        return {"loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))}

    def sample(self, step):
        self.samples_drawn += 1
        x = torch.zeros(1, 1, dtype=torch.long, device=next(self.model.parameters()).device)
        for _ in range(40):
            p = F.softmax(self.model(x)[:, -1].float(), -1)
            x = torch.cat([x, torch.multinomial(p, 1)], 1)
        return self.tokenizer.decode(x[0]) if self.tokenizer else str(x[0].tolist())

    def state_dict(self):
        return {"samples_drawn": self.samples_drawn}

    def load_state_dict(self, state):
        self.samples_drawn = state["samples_drawn"]


class TinyGANTask(Task):
    """Two optimizers, manual optimization: the shape a GAN task takes."""
    automatic_optimization = False

    def __init__(self, z: int = 8, dim: int = 64):
        self.z = z
        self.G = nn.Sequential(nn.Linear(z, 32), nn.ReLU(), nn.Linear(32, dim))
        self.D = nn.Sequential(nn.Linear(dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        self.tau_step = 0  # stands for a temperature schedule's position

    def modules(self):
        return {"G": self.G, "D": self.D}

    def ema_modules(self):
        return ["G"]

    def configure_optimizers(self):
        return {"g": torch.optim.Adam(self.G.parameters(), 1e-3, betas=(0.5, 0.99)),
                "d": torch.optim.Adam(self.D.parameters(), 1e-3, betas=(0.5, 0.99))}

    def training_step(self, batch, step):
        real = batch.flatten(1)
        fake = torch.sigmoid(self.G(torch.randn(real.shape[0], self.z, device=real.device)))
        d_real, d_fake = self.D(real), self.D(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.trainer.optimizer_step("d", d_loss)
        g_out = self.D(fake)
        g_loss = F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
        self.trainer.optimizer_step("g", g_loss)
        self.tau_step += 1
        return {"d_loss": d_loss, "g_loss": g_loss}

    def sample(self, step):
        return torch.sigmoid(self.G(torch.randn(16, self.z))).reshape(16, 1, 8, 8)

    def state_dict(self):
        return {"tau_step": self.tau_step}

    def load_state_dict(self, state):
        self.tau_step = state["tau_step"]


_TEXT = None


def text_data(n_chars: int = 60_000):
    """Train/val token tensors from the embedded English text (a prefix, for speed)."""
    global _TEXT
    if _TEXT is None:
        d = english_text()
        tok = d.tokenizer("char")
        _TEXT = tok, tok.encode_tensor(d.train[:n_chars]), tok.encode_tensor(d.val[:20_000])
    return _TEXT


def lm_setup(batch: int = 8, block: int = 32, seed: int = 0):
    tok, train, val = text_data()
    torch.manual_seed(seed)
    task = CharLMTask(tok.vocab_size, tok)
    return task, LMBatches(train, block, batch, seed=seed), LMEvalBatches(val, block, batch, max_batches=4)


class ToyRecipeTask(CharLMTask):
    """CharLMTask with the two methods recipes add (evaluate, generate)."""

    def __init__(self, vocab, tokenizer, lr, val):
        super().__init__(vocab, tokenizer, lr)
        self.val = val

    def evaluate(self):
        model = self.inference_module("model")
        x, y = self.val[:-1].unsqueeze(0), self.val[1:].unsqueeze(0)
        nll = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()).item()
        return {"val_nll": nll, "val_nll_floor": 1.0}

    def generate(self, n, prompt=None, seed=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            return "\n\n".join(self.sample(0) for _ in range(n))


def toy_recipe():
    """A recipe around CharLMTask, for the command-line tests (seconds to train)."""
    from dataclasses import dataclass

    from gencore._settings import setting
    from gencore.recipes import Recipe, RecipeSettings, RunPlan
    from gencore.train import TrainerConfig

    @dataclass
    class ToySettings(RecipeSettings):
        lr: float = setting(3e-3, "learning rate")
        block: int = setting(16, "context")
        mode: str = setting("a", "a choice", choices=("a", "b"))

    def build(s, device):
        tok, train, val = text_data()
        task = ToyRecipeTask(tok.vocab_size, tok, s.lr, val[:2000])
        return RunPlan(task, LMBatches(train, s.block, s.batch_size, seed=s.seed),
                       LMEvalBatches(val, s.block, s.batch_size, max_batches=2))

    return Recipe(name="toy-char", summary="next-character MLP on English text (tests)",
                  settings=ToySettings(steps=10, batch_size=8, trainer=TrainerConfig(
                      val_every=5, sample_every=5, ckpt_every=5, log_every=2, warmup_steps=2)),
                  demo={"steps": 6}, build=build)
