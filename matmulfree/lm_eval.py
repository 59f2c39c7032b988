"""lm-evaluation-harness (0.4.x) model ``matmulfree``: our checkpoints scored by the harness.

After ``import matmulfree.lm_eval`` the harness knows the model by name::

    import lm_eval, matmulfree.lm_eval
    results = lm_eval.simple_evaluate(model="matmulfree", model_args="pretrained=runs/x/final",
                                      tasks=["arc_easy"], batch_size=16)

``model_args``: ``pretrained`` (checkpoint directory, required), ``device`` (default ``cpu``),
``packed`` (the 2-bit inference path), ``max_length`` (tokens the model sees per request; default
the config's ``max_seq_len``), ``max_gen_toks`` (default 256). Requests that share a context run
it once and continue from its state (:mod:`matmulfree.scoring`). Models whose tokenizer has no
end-of-text token (the byte tokenizer) condition an empty context on a newline and stop
generating only at the task's stop strings or ``max_gen_toks``.
"""

from __future__ import annotations

import json
from typing import Any

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("matmulfree.lm_eval needs lm-eval 0.4.x: pip install 'matmulfree[hf]'") from e

from .checkpoint import load_model
from .data import load_tokenizer
from .scoring import greedy_continue, score_continuations

#: Sequences per forward call when the harness asks for ``batch_size=auto`` (no search here).
AUTO_BATCH_SIZE = 16


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {value!r}")
        return value.lower() in ("true", "1")
    return bool(value)


@register_model("matmulfree")
class MatmulfreeEvalLM(TemplateLM):
    """A checkpoint (``pretrained``) behind the harness's ``loglikelihood``,
    ``loglikelihood_rolling`` and ``generate_until``."""

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str | None = 16,
        device: str | None = "cpu",
        packed: bool | str = False,
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(k for k in kwargs if k not in ("max_batch_size", "dtype"))
        if unknown:
            raise ValueError(f"matmulfree: unknown model_args {unknown}; known: pretrained, batch_size, device, "
                             "packed, max_length, max_gen_toks")
        self.pretrained = str(pretrained)
        self._device = device or "cpu"
        self.model = load_model(self.pretrained, map_location=self._device)
        if _as_bool(packed):
            self.model.pack()
        self.model.eval()
        self.tokenizer = load_tokenizer(self.pretrained)
        if batch_size is None or str(batch_size).startswith("auto"):
            batch_size = AUTO_BATCH_SIZE
        self.batch_size = int(batch_size)
        self.max_length = int(max_length) if max_length is not None else self.model.config.max_seq_len
        self.max_gen_toks = int(max_gen_toks)
        for name in ("batch_size", "max_length", "max_gen_toks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"matmulfree: {name} must be positive, got {getattr(self, name)}")

    # -- tokens --------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_id
        return eos if eos is not None else self.tokenizer.encode("\n")[0]

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.spec

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # -- requests ------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """``requests``: ``((context, continuation), context ids, continuation ids)``."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = score_continuations(self.model, pairs, self.batch_size, self.max_length, self._device)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-probabilities of each whole string, scored in the harness's rolling windows
        of ``max_length`` tokens (all windows of all strings batched together)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for window in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(window)
                owner.append(i)
        scores = score_continuations(self.model, windows, self.batch_size, self.max_length, self._device)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations cut at the first stop string."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        eos = self.tok_decode([self.tokenizer.eos_id]) if self.tokenizer.eos_id is not None else None
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks {max_new} must be less than max_length {self.max_length}")
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):] or [self.prefix_token_id]
                       for i in members]

            def should_stop(row: int, tokens: list[int], until: list[str] = until) -> bool:
                if self.tokenizer.eos_id is not None and tokens[-1] == self.tokenizer.eos_id:
                    return True
                text = self.tok_decode(tokens)
                return any(term and term in text for term in until)

            new = greedy_continue(self.model, prompts, max_new, should_stop, self.batch_size, self._device,
                                  temperature=temperature, top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"),
                                  seed=kwargs.get("seed"))
            for i, tokens in zip(members, new):
                text = postprocess_generated_text(self.tok_decode(tokens), until, None)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def evaluate_tasks(
    checkpoint: str,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 16,
    include_path: str | None = None,
    device: str = "cpu",
    packed: bool = False,
    log_samples: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the harness on ``tasks`` (names, or task YAMLs found under ``include_path``) and return
    its results dict (``results``, ``configs``, ``versions``, ``n-shot``, ... and ``samples`` with
    ``log_samples``). Unknown task names raise ``ValueError`` naming them."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path:  # local tasks only: skip indexing the harness's thousands of task files
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not all(manager.match_tasks([t]) for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        where = f" (nor under --include-path {include_path})" if include_path else ""
        raise ValueError(f"unknown lm-eval task(s) {unknown}{where}")
    results = lm_eval.simple_evaluate(
        model="matmulfree",
        model_args={"pretrained": str(checkpoint), "packed": packed},
        tasks=tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, device=device,
        task_manager=manager, log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    if results is None:  # pragma: no cover - only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    return dict(results)


def results_table(results: dict[str, Any]) -> str:
    """The harness's Markdown table of a results dict (plus the group table when there are groups)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


def results_json(results: dict[str, Any]) -> str:
    """A results dict as JSON (numpy values and other non-JSON objects made serialisable)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
