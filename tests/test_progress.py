"""Training output: a bar only on a terminal; plain lines at log.every in a pipe or file."""

import io

from matmulfree.progress import ProgressLog, format_duration
from matmulfree.recipe import recipe_from_dict
from matmulfree.train import train
from tests.test_train import corpus, tiny_recipe  # noqa: F401  (fixture)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(float("nan")) == "?"


def test_plain_lines_off_a_terminal():
    out = io.StringIO()
    log = ProgressLog(total=10, initial=0, every=4, stream=out)
    assert not log.use_bar
    for step in range(1, 11):
        log.update(step, 2.0 - step / 10, 1e-3, 1000.0 if step % 2 == 0 else None)
    log.write("eval done")
    log.close()
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines[:-1]] == ["4/10", "8/10", "10/10"]  # every 4 steps + the last
    assert lines[0].startswith("step  4/10  loss 1.6000  lr 1.00e-03  tok/s 1,000  elapsed ")
    assert "ETA" in lines[0] and lines[-1] == "eval done"
    assert "\r" not in out.getvalue()


def test_bar_on_a_terminal_only():
    term = FakeTerminal()
    log = ProgressLog(total=5, initial=0, every=1, stream=term)
    assert log.use_bar
    for step in range(1, 6):
        log.update(step, 1.0, 1e-3, 500.0)
    log.close()
    assert "\r" in term.getvalue() and "step 1/5" not in term.getvalue()
    assert not ProgressLog(5, 0, 1, bar=False, stream=FakeTerminal()).use_bar  # log.progress: false
    silent = io.StringIO()
    ProgressLog(5, 0, 1, enabled=False, stream=silent).write("x")  # non-main process
    assert silent.getvalue() == ""


def test_training_in_a_pipe_prints_plain_lines(corpus, tmp_path, capsys):  # noqa: F811
    recipe = recipe_from_dict(tiny_recipe(corpus, train={"steps": 6}, log={"every": 3, "progress": True}), "t")
    train(recipe, tmp_path / "run")
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err
    steps = [ln.split()[1] for ln in err.splitlines() if ln.startswith("step ") and "loss" in ln and "ETA" in ln]
    assert steps == ["3/6", "6/6"]
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows if r.split(",")[2]] == ["3", "6"]  # log.csv is unchanged


def test_compile_refused_with_a_clear_message(corpus, tmp_path, monkeypatch):  # noqa: F811
    import pytest
    import torch

    from matmulfree import compile_support
    from matmulfree.train import TrainingError

    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert "no-such-compiler-xyz" in compile_support.compile_problem(torch.device("cpu"))
    recipe = recipe_from_dict(tiny_recipe(corpus, train={"compile": True}), "c.yaml")
    with pytest.raises(TrainingError, match=r"c.yaml: train.compile: true cannot be used here: .*C\+\+ compiler"):
        train(recipe, tmp_path / "run")
