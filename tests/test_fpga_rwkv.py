"""Integer RWKV-4 reference (matmulfree.fpga.intref_rwkv): exp / division tables, fixed-point
LayerNorm, token shift and the WKV recurrence against float on synthetic tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matmulfree.fpga import convert_rwkv, fixed, intref_rwkv, luts
from matmulfree.fpga.convert import ConversionError


def _formats(**kw):
    return {**convert_rwkv.DEFAULTS, **kw}


def _wkv_float(w, u, k, v):
    """Direct float64 WKV of the issue's formula (no running max), ``k, v (T, d)``."""
    T, _ = k.shape
    out = np.zeros_like(v)
    for t in range(T):
        i = np.arange(t)[:, None]
        e = np.exp(-(t - 1 - i) * w + k[:t])
        eu = np.exp(u + k[t])
        out[t] = ((e * v[:t]).sum(0) + eu * v[t]) / (e.sum(0) + eu)
    return out


def _wkv_int(w, u, k, v, act_frac=11):
    P = {**convert_rwkv.tables(_formats(act_frac=act_frac)), "act_frac": act_frac}
    P.update(convert_rwkv.wkv_params("x", w, u))
    kq = np.round(k * 2**act_frac).astype(np.int64)
    vq = np.round(v * 2**act_frac).astype(np.int64)
    st = intref_rwkv.RWKVState.zeros(1, k.shape[1])
    state, outs = (st.aa, st.bb, st.pp), []
    for t in range(k.shape[0]):
        o, state = intref_rwkv.wkv_step(kq[t:t + 1], vq[t:t + 1], state, P["x.u"], P["x.w"], P)
        assert fixed.fits(state[0], intref_rwkv.SUM_BITS) and fixed.fits(state[2], intref_rwkv.EXP_BITS)
        outs.append(o[0])
    return np.stack(outs) / 2.0**act_frac


# --------------------------------------------------------------------------- tables
def test_exp_table_accuracy():
    hi, lo = luts.make_exp_tables()
    assert fixed.fits(hi, 17, signed=False) and fixed.fits(lo, 17, signed=False)
    assert hi[0] == lo[0] == 65536 and hi[-1] == 0
    n = np.concatenate([np.arange(0, 4096), np.arange(0, 20 << 16, 97)])
    e = luts.exp_neg_lut(n, hi, lo) / 65536.0
    ref = np.exp(-n / 65536.0)
    # Index step 2**-10 (half a step of relative error) plus the Q16 output LSB.
    assert np.max(np.abs(e - ref) - ref * 2**-11) <= 2**-16
    assert (luts.exp_neg_lut(np.array([16 << 16, 1 << 30]), hi, lo) == 0).all()
    assert np.diff(luts.exp_neg_lut(np.arange(0, 1 << 21, 64), hi, lo)).max() <= 1  # monotone up to one LSB
    with pytest.raises(ValueError, match=">= 0"):
        luts.exp_neg_lut(np.array([-1]), hi, lo)


def test_division_by_table():
    div = luts.make_div_table()
    assert len(div) == 1024 and fixed.fits(div, 17, signed=False)
    rng = np.random.default_rng(0)
    den = np.concatenate([np.arange(1, 5000), rng.integers(1, 1 << 40, 20000)])
    num = rng.integers(-(1 << 45), 1 << 45, den.size) >> rng.integers(0, 45, den.size)
    q = intref_rwkv.wkv_divide(num, den, div)
    ref = num * 65536.0 / den
    inside = np.abs(ref) < (1 << 17) - 2
    err = np.abs(q - ref)[inside]
    # 11-bit truncated mantissa with a midpoint table (2**-11 relative), 17-bit numerator, rounding.
    assert np.max(err - np.abs(ref[inside]) * (2**-11 + 2**-16)) <= 1.0
    assert (np.abs(q[~inside]) >= (1 << 17) - 3).all()  # saturates instead of wrapping
    assert intref_rwkv.wkv_divide(np.array([5]), np.array([0]), div)[0] == 0


# --------------------------------------------------------------------------- stages
def test_layer_norm_matches_float():
    rng = np.random.default_rng(1)
    d = 96
    g, b = rng.uniform(-1.5, 2.0, d), rng.uniform(-0.8, 0.8, d)
    f = _formats(ln_frac=11)
    P = {**convert_rwkv.tables(f), **f, **convert_rwkv.layer_norm_params("ln", g, b, 11, 18)}
    x = rng.standard_normal((32, d)) * rng.uniform(0.01, 40, (32, 1)) + rng.uniform(-3, 3, (32, 1))
    x[0] = 0.0  # all-equal row: output is the bias
    xi = np.round(x * 2**12).astype(np.int64)
    y = intref_rwkv.layer_norm(xi, P, "ln") / 2.0**11
    xc = x - x.mean(-1, keepdims=True)
    ref = xc / np.sqrt((xc**2).mean(-1, keepdims=True) + 1e-30) * g + b
    ref[0] = b
    assert fixed.fits(intref_rwkv.layer_norm(xi, P, "ln"), 18)
    assert np.max(np.abs(y - ref)) < 0.01 * np.abs(ref).max()
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 3e-3


def test_shift_mix():
    rng = np.random.default_rng(2)
    xx, prev = rng.integers(-(1 << 17), 1 << 17, (2, 4, 50))
    mu = rng.uniform(-0.2, 1.2, 50)
    mq = convert_rwkv.mix_params("mu", mu)
    out = intref_rwkv.shift_mix(xx, prev, mq)
    ref = xx * (mq / 32768.0) + prev * (1 - mq / 32768.0)
    ok = np.abs(ref) < (1 << 17) - 1
    assert np.max(np.abs(out - ref)[ok]) <= 0.5
    assert fixed.fits(out, 18)
    with pytest.raises(ConversionError, match="token-shift mixes"):
        convert_rwkv.mix_params("layers.0.att.mu_k", np.array([4.5]))


@pytest.mark.parametrize("T,kscale", [(64, 1.0), (300, 20.0)])
def test_wkv_step_matches_float(T, kscale):
    """Long sequences with large k (a naive fp32 exp of 300 * ... overflows) stay within the
    table precision of the float recurrence."""
    rng = np.random.default_rng(T)
    d = 24
    w = np.exp(rng.uniform(-5, 2, d))  # RWKV-4's decay range
    u = rng.uniform(-1.5, 1.0, d)
    k = np.clip(rng.standard_normal((T, d)) * kscale, -60, 60)
    v = rng.standard_normal((T, d)) * 3
    out = _wkv_int(w, u, k, v)
    # Float reference in the running-max form (float64), checked against the direct formula first.
    ref = _wkv_float(w, u, k, v) if kscale == 1.0 else None
    from matmulfree.fpga.intref_rwkv import EXP_BITS  # noqa: F401  (keeps the module import explicit)

    aa, bb, pp = np.zeros(d), np.zeros(d), np.full(d, -1e38)
    stable = []
    kq = np.round(k * 2048) / 2048  # the integer model sees k and v at Q11
    vq = np.round(v * 2048) / 2048
    for t in range(T):
        ww = u + kq[t]
        p = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - p), np.exp(ww - p)
        stable.append((e1 * aa + e2 * vq[t]) / (e1 * bb + e2))
        ww = pp - w
        p = np.maximum(ww, kq[t])
        e1, e2 = np.exp(ww - p), np.exp(kq[t] - p)
        aa, bb, pp = e1 * aa + e2 * vq[t], e1 * bb + e2, p
    stable = np.stack(stable)
    if ref is not None:
        np.testing.assert_allclose(_wkv_float(w, u, kq, vq), stable, rtol=1e-9, atol=1e-9)
    assert np.all(np.isfinite(stable))
    err = np.abs(out - stable)
    assert np.max(err) < 0.02 * np.abs(v).max(), np.max(err)
    assert np.mean(err) < 2e-3 * np.abs(v).max(), np.mean(err)


def test_wkv_params_limits():
    p = convert_rwkv.wkv_params("layers.0.att", np.array([1e-9, 0.5, 20.0]), np.array([-1.0, 0.0, 3.0]))
    assert p["layers.0.att.w"].tolist() == [1, 32768, 20 * 65536]
    assert p["layers.0.att.u"].tolist() == [-65536, 0, 3 * 65536]
    with pytest.raises(ConversionError, match=r"layers\.0\.att\.u \(time_first\)"):
        convert_rwkv.wkv_params("layers.0.att", np.array([1.0]), np.array([200.0]))
    with pytest.raises(ConversionError, match="must be > 0"):
        convert_rwkv.wkv_params("layers.0.att", np.array([0.0]), np.array([0.0]))
    assert math.isclose(convert_rwkv.layer_norm_params("n", np.ones(16), np.zeros(16), 11, 18)["n.gain_scale"],
                        32767.0)


# --------------------------------------------------------------------------- whole model vs float
def _rwkv_config(**kw):
    import matmulfree

    return matmulfree.preset("fpga", architecture="rwkv", d_model=64, n_layers=2, intermediate_size=128, **kw)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "gate"])
def trained_rwkv(request):
    """A small RWKV-4 trained for 60 steps on a learnable byte text, converted with calibration."""
    import torch

    from tests.test_fpga_intref import _text_ids, _train

    torch.set_num_threads(1)
    model = _train(_rwkv_config(rwkv_gate=request.param))
    data = _text_ids(4000, 123)
    return model, convert_rwkv.convert(model, calib_ids=data[None, :256]), data


def test_integer_rwkv_close_to_float(trained_rwkv):
    from matmulfree.fpga import fidelity

    model, P, data = trained_rwkv
    assert P["arch"] == intref_rwkv.ARCH_RWKV and P["rwkv_gate"] == int(model.config.rwkv_gate)
    im = intref_rwkv.RWKVIntModel(P)
    r = fidelity.perplexity(model, im, np.stack([data[i * 96:(i + 1) * 96] for i in range(4)]))
    assert r["ppl_float"] < 4, r  # learned the text (uniform: 256)
    assert abs(r["ppl_rel_change"]) < 0.01, r
    assert r["logit_rel_err"] < 0.02, r
    assert r["argmax_agreement"] > 0.97, r
    g = fidelity.greedy_agreement(model, im, np.stack([data[:8], data[50:58]]), 32)
    assert g["teacher_forced_agreement"] >= 0.95, g


def test_rwkv_trace_widths_and_state(trained_rwkv):
    _, P, data = trained_rwkv
    im = intref_rwkv.RWKVIntModel(P)
    state = im.init_state(1)
    for t in range(6):
        _, _, state = im.step(data[t:t + 1], state)
    before = [vars(s).copy() for s in state]
    tr = im.trace_token(int(data[6]), state)
    for s, b in zip(state, before):  # step() leaves the state passed in untouched
        for k, v in b.items():
            np.testing.assert_array_equal(getattr(s, k), v)
    logits, token, new = im.step(data[6:7], state)
    np.testing.assert_array_equal(tr["logits"], logits)
    for i in range(P["n_layers"]):
        a = f"layers.{i}.att"
        assert fixed.fits(tr[f"layers.{i}.ln1.y"], 18) and fixed.fits(tr[a + ".wkv"], 18)
        assert fixed.fits(tr[a + ".pp"], intref_rwkv.EXP_BITS) and (tr[a + ".bb"] >= 1 << 15).all()
        assert fixed.fits(tr[a + ".r"], 16, signed=False) and fixed.fits(tr[f"layers.{i}.ffn.k2"], 34, signed=False)
        np.testing.assert_array_equal(new[i].att_x, tr[f"layers.{i}.ln1.y"])
        np.testing.assert_array_equal(new[i].ffn_x, tr[f"layers.{i}.ln2.y"])
    for n in intref_rwkv.bitlinear_names(P["n_layers"], bool(P["rwkv_gate"])):
        assert fixed.fits(tr[n + ".x_q"], 8) and (tr[n + ".E"] < 0).all(), n
    # Rows are independent and carrying the state equals one long sequence.
    ids = np.stack([data[:12], data[40:52]])
    full = im.sequence_logits(ids)
    np.testing.assert_array_equal(im.sequence_logits(ids[1:])[0], full[1])
    mem = intref_rwkv.memory_bits(P)
    n_w = sum(P[n + ".d_in"] * P[n + ".d_out"] for n in intref_rwkv.bitlinear_names(2, bool(P["rwkv_gate"])))
    assert mem["weights"] == 2 * n_w and mem["total"] == sum(v for k, v in mem.items() if k != "total")


def test_rwkv_converter_rejects_unsupported():
    import matmulfree

    with pytest.raises(ConversionError, match="ternary_head"):
        convert_rwkv.convert(matmulfree.build_model(_rwkv_config(ternary_head=False)))
    with pytest.raises(ConversionError, match="quantize_activations"):
        convert_rwkv.convert(matmulfree.build_model(_rwkv_config(quantize_activations=False)))
    with pytest.raises(ConversionError, match="expected an 'rwkv' model"):
        convert_rwkv.convert(matmulfree.build_model(matmulfree.preset("fpga", d_model=64, n_layers=1)))
    model = matmulfree.build_model(_rwkv_config())
    with pytest.raises(ConversionError, match="unknown format parameter"):
        convert_rwkv.convert(model, ln_fraction=3)
    with pytest.raises(KeyError, match="not an RWKV"):
        intref_rwkv.RWKVIntModel({"d_model": 4})
