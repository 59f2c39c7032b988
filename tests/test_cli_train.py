"""``matmulfree train / generate / eval`` end to end on a tiny recipe, and their error messages."""

import json

import pytest
import yaml

from matmulfree.cli import build_parser, main
from tests.test_train import corpus, tiny_recipe  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("cli")
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(corpus)))
    assert main(["train", str(path), "--out", str(root / "run"), "--set", "train.steps=8"]) == 0
    return root / "run"


def test_every_verb_has_help(capsys):
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in ("train", "generate", "eval", "info"):
        assert verb in verbs
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        for action in verbs[verb]._actions:  # every option is explained
            if action.option_strings and action.dest != "help":
                assert action.help, f"{verb} {action.option_strings} has no help"
        assert "usage:" in out


def test_train_generate_eval(trained, corpus, capsys):  # noqa: F811
    assert (trained / "final" / "model.safetensors").is_file()
    capsys.readouterr()
    args = ["generate", str(trained / "final"), "--prompt", "the king", "--max-new-tokens", "20", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the king") and len(first.encode()) >= len("the king") + 1
    assert main(args) == 0 and capsys.readouterr().out == first  # seeded: reproducible
    assert main(args + ["--packed", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the king")
    assert main(["eval", str(trained / "final"), "--data", f"text:{corpus}/*.txt", "--seq-len", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 0 and result["perplexity"] > 1 and result["bits_per_byte"] > 0
    assert main(["eval", str(trained / "final"), "--data", f"text:{corpus}/*.txt", "--seq-len", "16",
                 "--packed", "--json"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["loss_nats_per_token"] == pytest.approx(result["loss_nats_per_token"], rel=1e-4)


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    cases = [
        (["train", "no-such-recipe"], "not found"),
        (["train", "shakespeare-tiny", "--set", "train.stepz=3"], "stepz"),
        (["generate", str(tmp_path / "missing")], "missing"),
        (["eval", str(trained / "final"), "--data", f"text:{tmp_path}/no*.txt", "--seq-len", "8"], "no file matches"),
        (["eval", str(trained / "final"), "--seq-len", "0"], "--seq-len"),
        (["train", str(trained / "recipe.yaml"), "--out", str(trained)], "--resume"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert fragment in err and len(err.splitlines()) == 1, (argv, err)
