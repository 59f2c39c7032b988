"""The trainer: ``matmulfree train RECIPE`` (one CPU, one GPU, or many processes via accelerate).

Run folder (``--out``, default ``runs/<recipe name>``)::

    recipe.yaml                  the resolved recipe (after --set overrides)
    tokenizer_config.json        tokenizer spec (+ tokenizer.json for BPE / hub tokenizers)
    checkpoints/step-00000500/   accelerate state (model.safetensors, optimizer, scheduler, RNG)
                                 + trainer_state.json (step, samples consumed, metrics)
    final/                       the trained model: config.json + model.safetensors + tokenizer
    log.csv, tensorboard/, loss.png, samples.txt, metrics.json

Loss normalisation: each step sums the token losses of every micro-batch on every process and
divides by the number of target tokens in the whole global batch, counted before the first
backward (:mod:`matmulfree.accumulate`; packed sequences have ``global_batch × seq_len``);
DDP's gradient averaging is undone by multiplying by the number of processes. One process with
batch ``2b`` and two processes with ``b`` each therefore compute the same gradient (up to
summation order).

A checkpoint is written to ``checkpoints/.tmp-step-N`` and renamed when complete, so a kill while
saving leaves the previous checkpoint intact; the last ``checkpoint.keep`` are kept. ``resume``
restores model, optimizer, scheduler, RNG states and the data position, and reproduces the losses
of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .accumulate import accumulate_gradients, count_targets, summed_token_loss
from .checkpoint import atomic_write, atomic_write_text, save_model
from .compile_support import compile_for_training
from .data import (
    PackedSequences,
    Tokenizer,
    build_tokenizer,
    load_corpus,
    load_tokenizer,
    tokenize_split,
)
from .data.sharding import rank_slice, step_indices
from .distributed import Strategy
from .models import build_model
from .progress import ProgressLog
from .recipe import Recipe
from .warm_start import WarmStart, WarmStartError, build_source_model, warm_start

STATE_FILE = "trainer_state.json"


class TrainingError(RuntimeError):
    """A run that cannot start or continue (non-finite loss, mismatched resume, ...)."""


# -- schedules (docs/design.md, "Training schedules") -----------------------------------------
def lr_factor(step: int, recipe: Recipe) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based).

    ``cosine``: linear warm-up then cosine to ``min_lr_ratio``. ``cosine-halved``: the same with
    the LR halved from the midpoint on (the MatMul-free paper). ``two-stage``: BitNet b1.58's
    schedule, warm-up then linear decay, with the peak cut in half at the midpoint (stage two;
    weight decay also drops to 0 there, see :func:`weight_decay_factor`). ``constant``: warm-up
    then flat.
    """
    t = recipe.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    floor = t.min_lr_ratio
    if t.schedule == "constant":
        return 1.0
    if t.schedule in ("cosine", "cosine-halved"):
        f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return f * (0.5 if t.schedule == "cosine-halved" and step >= t.steps // 2 else 1.0)
    # two-stage: linear decay, halved in stage two
    f = 1 - (1 - floor) * progress
    return f * (0.5 if step >= t.steps // 2 else 1.0)


def weight_decay_factor(step: int, recipe: Recipe) -> float:
    """``two-stage`` turns weight decay off in the second half; other schedules keep it."""
    return 0.0 if recipe.train.schedule == "two-stage" and step >= recipe.train.steps // 2 else 1.0


# -- data -------------------------------------------------------------------------------------
@dataclass
class RunData:
    tokenizer: Tokenizer
    train: PackedSequences
    validation: PackedSequences
    bytes_per_token: float  # of the validation text, for bits per byte


def prepare_data(recipe: Recipe, out: Path, main_first: Callable[[], contextlib.AbstractContextManager],
                 resume: bool) -> RunData:
    """Tokenizer (trained or restored) and packed train / validation sequences."""
    d = recipe.data
    with main_first():
        if resume or (out / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(out)
            if tokenizer.spec != d.tokenizer:
                raise TrainingError(f"{out}: run was made with tokenizer {tokenizer.spec!r}, "
                                    f"recipe says {d.tokenizer!r}")
        else:
            texts = None
            if d.tokenizer.startswith("bpe:"):
                docs = load_corpus(d.source, "train", d.validation_fraction, d.streaming)
                texts = (row["text"] for row in docs)
            tokenizer = build_tokenizer(d.tokenizer, texts)
        train_tokens = tokenize_split(d.source, tokenizer, "train", max_tokens=d.max_train_tokens,
                                      validation_fraction=d.validation_fraction, streaming=d.streaming,
                                      num_proc=d.num_proc)
        val_source = d.validation_source or d.source
        val_split = "train" if d.validation_source else "validation"
        val_tokens = tokenize_split(val_source, tokenizer, val_split, max_tokens=d.max_validation_tokens,
                                    validation_fraction=d.validation_fraction, streaming=d.streaming)
    return RunData(tokenizer, PackedSequences(train_tokens.tokens, d.seq_len, f"{d.source} [train]"),
                   PackedSequences(val_tokens.tokens, d.seq_len, f"{val_source} [{val_split}]"),
                   val_tokens.bytes_per_token)


def sequence_loss(model: torch.nn.Module, seq: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy (nats) of ``seq (B, L + 1)`` and the number of targets
    (padding excluded, see :mod:`matmulfree.accumulate`)."""
    return summed_token_loss(model, seq)


# -- checkpoints ------------------------------------------------------------------------------
def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    dirs = checkpoint_dirs(out)
    return dirs[-1] if dirs else None


# -- the loop ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> train loss (nats/token)
    val_loss: float | None = None
    val_bpb: float | None = None
    wall_time_s: float = 0.0
    stopped: str | None = None  # why the run stopped early, if it did


class Trainer:
    """Trains ``recipe`` into ``out``. ``on_step(step, loss)`` is called after every optimizer step."""

    def __init__(self, recipe: Recipe, out: str | Path | None = None, resume: bool = False,
                 on_step: Callable[[int, float], None] | None = None, init_from: str | Path | None = None,
                 allow_resize: str | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe, self.resume, self.on_step = recipe, resume, on_step
        self.out = Path(out or recipe.out or Path("runs") / recipe.name)
        t = recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        # Without CUDA, accelerate must be told to use the CPU to form a gloo process group.
        self.strategy = Strategy.for_recipe(recipe)
        self.acc = Accelerator(**self.strategy.accelerator_kwargs())
        set_seed(t.seed)
        if resume and latest_checkpoint(self.out) is None:
            raise TrainingError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
        if not resume and latest_checkpoint(self.out) is not None:
            raise TrainingError(f"{self.out} already holds checkpoints; pass --resume to continue or choose --out")
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        self.data = prepare_data(recipe, self.out, self.acc.main_process_first, resume)
        self.config = recipe.model_config(self.data.tokenizer.vocab_size)
        if recipe.data.seq_len > self.config.max_seq_len:
            raise TrainingError(f"{recipe.source}: data.seq_len={recipe.data.seq_len} exceeds "
                                f"model max_seq_len={self.config.max_seq_len}")
        model = build_model(self.config)
        self.warm: WarmStart | None = None
        self.init_from: dict | None = None  # the warm-start record kept in trainer_state.json / metrics.json
        if init_from is not None:
            if resume:
                raise TrainingError("--init-from starts a new run from another model's weights and --resume "
                                    "continues this run exactly; use one of them")
            try:
                self.warm = warm_start(model, init_from, allow_resize)
            except WarmStartError as e:
                raise TrainingError(str(e)) from None
        raw: list[torch.optim.Optimizer] = []

        def make_optimizer(m: torch.nn.Module) -> torch.optim.Optimizer:
            raw.append(torch.optim.AdamW(m.optimizer_groups(t.weight_decay), lr=t.lr, betas=tuple(t.betas), eps=t.eps))
            for g in raw[0].param_groups:
                g["base_weight_decay"] = g["weight_decay"]
            return raw[0]

        # The strategy wraps the model (DDP / FSDP2 / DeepSpeed) and builds the optimizer on its parameters.
        self.model, self.optimizer = self.strategy.prepare(self.acc, model, make_optimizer)
        # The scheduler is not prepared: accelerate would step it once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(raw[0], lambda s: lr_factor(s, recipe))
        self.acc.register_for_checkpointing(self.scheduler)
        self.step_model = self.model  # what the training step calls: the model, or its compiled form
        if t.compile:
            try:
                self.step_model = compile_for_training(self.model, self.acc.device)
            except RuntimeError as e:
                raise TrainingError(f"{recipe.source}: {e}") from None
        self.processes = self.acc.num_processes
        self.global_batch = t.batch_size * t.grad_accum * self.processes
        self.step = 0
        self.history: list[dict] = []

    # -- helpers --
    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    def _micro_batch(self, indices, micro: int) -> torch.Tensor:
        ids = rank_slice(indices, micro, self.acc.process_index, self.processes, self.recipe.train.batch_size)
        return self.data.train.get(ids).to(self.acc.device)

    def _micro_context(self, last: bool) -> contextlib.ExitStack:
        """Autocast, and the strategy's ``no_sync`` on every micro-batch but the last."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.strategy.no_sync(self.acc, self.model, last))
        stack.enter_context(self.acc.autocast())
        return stack

    def _log(self, msg: str) -> None:
        self.progress.write(msg)

    # -- one optimizer step --
    def train_step(self) -> tuple[float, float]:
        """Run one optimizer step; returns ``(loss nats/token, grad norm)``."""
        t = self.recipe.train
        indices = step_indices(len(self.data.train), self.step, self.global_batch, t.seed)
        for g in self.optimizer.param_groups:
            g["weight_decay"] = g["base_weight_decay"] * weight_decay_factor(self.step, self.recipe)
        self.model.train()
        batches = [self._micro_batch(indices, micro) for micro in range(t.grad_accum)]
        # The whole step's target count, known before the first backward (exact accumulation).
        local = torch.tensor(float(sum(count_targets(b) for b in batches)), device=self.acc.device)
        total_targets = int(self.acc.reduce(local, "sum").item()) if self.processes > 1 else int(local.item())
        loss_sum = accumulate_gradients(self.step_model, batches, total_targets, lambda m, s: sequence_loss(m, s),
                                        self.acc.backward, self._micro_context,
                                        grad_scale=self.strategy.loss_scale(self.acc))
        loss = (self.acc.reduce(loss_sum, "sum") / total_targets).item()
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            last = latest_checkpoint(self.out)
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingError(f"non-finite training loss ({loss}) at step {self.step + 1}; stopping, {keep}")
        grad_norm = self.strategy.clip(self.acc, self.model, t.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, grad_norm

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Validation loss (nats/token), perplexity and bits per byte over the first eval batches
        (of the model being trained, or of ``model``)."""
        e = self.recipe.eval
        model = model if model is not None else self.model
        model.eval()
        n_seq = min(len(self.data.validation), e.batches * e.batch_size)
        n_seq -= n_seq % self.processes  # equal batches per rank (FSDP's forward is collective)
        total = torch.zeros((), device=self.acc.device, dtype=torch.float64)
        count = torch.zeros((), device=self.acc.device, dtype=torch.float64)
        ids = torch.arange(n_seq)[self.acc.process_index :: self.processes]
        for start in range(0, len(ids), e.batch_size):
            seq = self.data.validation.get(ids[start : start + e.batch_size].numpy()).to(self.acc.device)
            with self.acc.autocast():
                loss, n = sequence_loss(model, seq)
            total += loss.double()
            count += n
        loss = (self.acc.reduce(total, "sum") / self.acc.reduce(count, "sum")).item()
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                "val_bpb": loss / math.log(2) / self.data.bytes_per_token}

    @torch.no_grad()
    def samples(self, model: torch.nn.Module) -> list[str]:
        s = self.recipe.sample
        tok = self.data.tokenizer
        model.eval()
        texts = []
        for i, prompt in enumerate(s.prompts):
            ids = torch.tensor(tok.encode(prompt) or [tok.eos_id or 0], device=self.acc.device)
            out = model.generate(ids, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                 seed=self.recipe.train.seed + i)
            texts.append(prompt + tok.decode(out[len(ids) :].tolist()))
        return texts

    # -- checkpoints --
    def save_checkpoint(self, metrics: dict) -> Path:
        root = self.out / "checkpoints"
        final = root / f"step-{self.step:08d}"
        tmp = root / f".tmp-step-{self.step:08d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.strategy.save(self.acc, self.model, self.optimizer, tmp)
        self.acc.wait_for_everyone()  # every rank wrote its files (RNG state, ZeRO partition) before the rename
        if self.acc.is_main_process:
            state = {"step": self.step, "samples_seen": self.step * self.global_batch,
                     "global_batch": self.global_batch, "processes": self.processes,
                     "strategy": self.strategy.name, "init_from": self.init_from,
                     "model_config": self.config.to_dict(), "metrics": metrics, "history": self.history}
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in checkpoint_dirs(self.out)[: -self.recipe.checkpoint.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / STATE_FILE).read_text())
        if state["model_config"] != self.config.to_dict():
            raise TrainingError(f"--resume: {path} holds a different model ({state['model_config']}) than the recipe")
        if state["global_batch"] != self.global_batch:
            raise TrainingError(f"--resume: {path} used a global batch of {state['global_batch']} sequences, "
                                f"now {self.global_batch}; keep batch_size × grad_accum × processes equal")
        if self.strategy.sharded_checkpoints and state["processes"] != self.processes:
            raise TrainingError(f"--resume: {path} holds shards of {state['processes']} processes, now "
                                f"{self.processes}; resume on {state['processes']} or consolidate it "
                                "(matmulfree checkpoint consolidate) and warm-start")
        if state.get("strategy", "ddp") != self.strategy.name:
            raise TrainingError(f"--resume: {path} was written by strategy {state.get('strategy', 'ddp')!r}, "
                                f"the recipe says distributed.strategy={self.strategy.name!r}")
        self.strategy.load(self.acc, self.model, self.optimizer, path)
        self.step, self.history = state["step"], state["history"]
        self.init_from = state.get("init_from")

    def warm_start_check(self) -> None:
        """Print the warm-start table, evaluate the new and the source model before step 1 and
        record both losses (``warm_start.json`` and ``init_from`` of the run's metadata)."""
        self._log(self.warm.table())
        new = self.evaluate()["val_loss"]
        source_model = build_source_model(self.warm).to(self.acc.device)
        source = self.evaluate(source_model)["val_loss"]
        del source_model
        record = self.warm.to_dict()
        record.update(step0_val_loss=new, source_val_loss=source, step0_difference=new - source)
        self.init_from = {k: record[k] for k in ("source", "counts", "config_changes", "function_preserved",
                                                 "reasons", "step0_val_loss", "source_val_loss")}
        if self.acc.is_main_process:
            atomic_write_text(self.out / "warm_start.json", json.dumps(record, indent=1))
        self._log(f"warm start check: step-0 val loss {new:.6f} nats/token, source model {source:.6f} "
                  f"(difference {new - source:+.2e})")

    # -- main loop --
    def fit(self) -> TrainResult:
        r, t = self.recipe, self.recipe.train
        if self.acc.is_main_process:
            atomic_write_text(self.out / "recipe.yaml", yaml.safe_dump(r.to_dict(), sort_keys=False))
            self.data.tokenizer.save(self.out)
        if self.resume:
            path = latest_checkpoint(self.out)
            self.load_checkpoint(path)
        self.progress = ProgressLog(t.steps, self.step, r.log.every, enabled=self.acc.is_main_process,
                                    bar=r.log.progress)
        if self.resume:
            self._log(f"resumed from {path} at step {self.step}")
        logger = RunLogger(self.out, self.step, enabled=self.acc.is_main_process, tensorboard=r.log.tensorboard)
        result = TrainResult(self.out, self.step)
        self._log(f"{r.name}: {self.unwrapped.summary()}")
        self._log(f"global batch {self.global_batch} sequences × {r.data.seq_len} tokens, {t.steps} steps, "
                  f"{self.processes} process(es) on {self.acc.device}, precision {t.mixed_precision}")
        if self.warm is not None and self.step == 0:
            self.warm_start_check()
        tokens_per_step = self.global_batch * r.data.seq_len
        start, window_t, window_steps = time.perf_counter(), time.perf_counter(), 0
        metrics: dict = {}
        try:
            while self.step < t.steps:
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm = self.train_step()
                result.losses[self.step] = loss
                window_steps += 1
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                last = self.step == t.steps
                tok_s = None
                if self.step % r.log.every == 0 or last:
                    now = time.perf_counter()
                    tok_s = window_steps * tokens_per_step / max(now - window_t, 1e-9)
                    window_t, window_steps = now, 0
                    row = {"step": self.step, "tokens": self.step * tokens_per_step, "loss": loss, "lr": lr,
                           "grad_norm": grad_norm, "tokens_per_s": tok_s, "elapsed_s": now - start}
                    logger.log(row)
                self.progress.update(self.step, loss, lr, tok_s)
                if (r.eval.every and self.step % r.eval.every == 0) or last:
                    metrics = self.evaluate()
                    self.history.append({"step": self.step, "train_loss": loss, **metrics})
                    logger.log({"step": self.step, **metrics})
                    self._log(f"step {self.step}: train {loss:.4f}  val {metrics['val_loss']:.4f} nats/token  "
                              f"ppl {metrics['val_ppl']:.2f}  {metrics['val_bpb']:.4f} bits/byte")
                if (r.sample.every and self.step % r.sample.every == 0) or last:
                    full = self.strategy.full_model(self.acc, self.model)  # collective under FSDP
                    if full is not None:
                        texts = self.samples(full)
                        logger.samples(self.step, texts)
                        self._log(f"--- sample at step {self.step} ---\n{texts[0]}\n---")
                if (r.checkpoint.every and self.step % r.checkpoint.every == 0) or last:
                    self.save_checkpoint(metrics)
        finally:
            self.progress.close()
            logger.close()
        result.steps = self.step
        result.wall_time_s = time.perf_counter() - start
        result.val_loss, result.val_bpb = metrics.get("val_loss"), metrics.get("val_bpb")
        full = self.strategy.full_model(self.acc, self.model)  # collective under FSDP / DeepSpeed
        if self.acc.is_main_process:
            final = self.out / "final"
            save_model(full, final)
            self.data.tokenizer.save(final)
            summary = {"recipe": r.name, "steps": self.step, "wall_time_s": result.wall_time_s,
                       "tokens": self.step * tokens_per_step, "processes": self.processes, **metrics,
                       "parameters": full.num_parameters(), "init_from": self.init_from}
            atomic_write_text(self.out / "metrics.json", json.dumps(summary, indent=1))
            logger.plot(self.out / "loss.png", r.name)
            self._log(f"done: {self.step} steps in {result.wall_time_s:.0f} s; model in {final}")
        self.acc.wait_for_everyone()
        return result


class RunLogger:
    """``log.csv`` (one row per log step; evaluation rows add val_* columns), TensorBoard, samples, plot."""

    FIELDS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s",
              "val_loss", "val_ppl", "val_bpb"]

    def __init__(self, out: Path, start_step: int, enabled: bool, tensorboard: bool) -> None:
        self.enabled, self.path, self.writer = enabled, out / "log.csv", None
        if not enabled:
            return
        rows = []
        if self.path.is_file():  # a resumed run drops rows past its checkpoint
            with open(self.path) as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]
        self.file = open(self.path, "w", newline="")
        self.csv = csv.DictWriter(self.file, self.FIELDS)
        self.csv.writeheader()
        self.csv.writerows(rows)
        self.samples_path = out / "samples.txt"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                self.writer = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.csv.writerow({k: row.get(k, "") for k in self.FIELDS})
        self.file.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(k, v, row["step"])

    def samples(self, step: int, texts: list[str]) -> None:
        if not self.enabled:
            return
        with open(self.samples_path, "a") as f:
            for text in texts:
                f.write(f"=== step {step} ===\n{text}\n\n")
        if self.writer is not None:
            self.writer.add_text("sample", texts[0], step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()

    def plot(self, path: Path, title: str) -> None:
        """Train and validation loss against step, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.path) as f:
            rows = list(csv.DictReader(f))
        train = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
        val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
        fig, ax = plt.subplots(figsize=(6, 4))
        if train:
            ax.plot(*zip(*train), label="train")
        if val:
            ax.plot(*zip(*val), "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)


def train(recipe: Recipe, out: str | Path | None = None, resume: bool = False,
          on_step: Callable[[int, float], None] | None = None, init_from: str | Path | None = None,
          allow_resize: str | None = None) -> TrainResult:
    """Train ``recipe`` (see :class:`Trainer`); ``init_from`` warm-starts it (:mod:`matmulfree.warm_start`)."""
    return Trainer(recipe, out, resume, on_step, init_from, allow_resize).fit()
