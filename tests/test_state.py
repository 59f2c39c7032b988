"""Batch operations on model states (matmulfree.models.state) for every architecture."""

import torch

from matmulfree.config import MatMulFreeConfig, TransformerConfig
from matmulfree.models import build_model
from matmulfree.models.state import (
    can_concat,
    concat_states,
    repeat_state,
    run_prompts,
    select_state,
    state_batch_size,
    state_nbytes,
)

SHAPE = dict(vocab_size=64, d_model=16, n_layers=2, intermediate_size=32)


def _models():
    torch.manual_seed(0)
    return [build_model(MatMulFreeConfig(**SHAPE)).eval(), build_model(TransformerConfig(**SHAPE, n_heads=2)).eval()]


def test_joined_states_continue_like_separate_ones():
    for model in _models():
        a, b = model(torch.tensor([[1, 2, 3]])).state, model(torch.tensor([[4, 5, 6]])).state
        joined = concat_states([a, b])
        second = select_state(joined, [1])  # before step: a KV cache appends in place
        assert state_batch_size(joined) == 2 and state_nbytes(joined) == state_nbytes(a) + state_nbytes(b)
        logits, _ = model.step(torch.tensor([7, 8]), joined)
        la, _ = model.step(torch.tensor([7]), a)
        lb, _ = model.step(torch.tensor([8]), b)
        torch.testing.assert_close(logits, torch.cat([la, lb]))
        rep = repeat_state(a, 3)
        assert state_batch_size(rep) == 3 and state_batch_size(select_state(joined, [1])) == 1
        torch.testing.assert_close(model.step(torch.tensor([8]), second)[0], lb)


def test_kv_caches_of_different_lengths_do_not_join():
    mlgru, tf = _models()
    _, states = run_prompts(tf, [[1, 2], [3, 4, 5]], "cpu")
    assert not can_concat(states)
    _, states = run_prompts(mlgru, [[1, 2], [3, 4, 5]], "cpu")
    assert can_concat(states)


def test_a_copy_is_not_mutated_by_the_original():
    _, tf = _models()
    state = tf(torch.tensor([[1, 2, 3]])).state
    copy = select_state(state, [0])
    tf.step(torch.tensor([4]), state)  # the KV cache appends in place
    assert state.length() == 4 and copy.length() == 3
