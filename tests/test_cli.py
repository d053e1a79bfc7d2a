"""User mistakes: one line on stderr naming the problem, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from kronbit.cli import main


@pytest.fixture
def base(tmp_path, tiny_bert):
    from helpers import write_tiny_sst2

    data = write_tiny_sst2(tmp_path / "glue")
    return ["finetune", "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
            "--output-dir", str(tmp_path / "run")]


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize("change, message", [
    (lambda a: _replace(a, "--task", "sst3"), "unknown task 'sst3'; did you mean 'sst2'?"),
    (lambda a: _replace(a, "--model", "./no/such/model"), "model path does not exist: ./no/such/model"),
    (lambda a: _replace(a, "--data-dir", "/no/such/glue"), "data directory not found: /no/such/glue"),
    (lambda a: _replace(a, "--task", "rte"), "no RTE/ folder for task rte"),
    (lambda a: a + ["--set", "learnig_rate=1e-4"], "unknown key 'learnig_rate'; did you mean 'learning_rate'?"),
    (lambda a: a + ["--epochs", "0"], "epochs must be > 0"),
    (lambda a: a + ["--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
    (lambda a: a + ["--resume"], "nothing to resume"),
])
def test_user_errors_are_one_line(base, capsys, change, message):
    assert main(change(base)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kronbit: error: {message}" or (err.startswith("kronbit: error: ") and message in err)
    assert "\n" not in err


def test_eval_errors(tmp_path, tiny_bert, capsys):
    from helpers import write_tiny_sst2

    data = write_tiny_sst2(tmp_path / "glue")
    assert main(["eval", "--model", str(tiny_bert), "--data-dir", str(data)]) == 2
    assert "no task recorded" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
                 "--split", "test"]) == 2
    assert "has no labels to score" in capsys.readouterr().err


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kronbit.cli", "eval", "--model", str(tmp_path / "none"),
                           "--task", "sst2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"kronbit: error: model path does not exist: {tmp_path / 'none'}"]
    assert "Traceback" not in proc.stderr


def test_every_flag_has_help_text():
    import argparse

    from kronbit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [(name, act.option_strings or act.dest) for name, p in sub.choices.items() for act in p._actions
               if not act.help and not isinstance(act, argparse._HelpAction)]
    assert sorted(sub.choices) and missing == []
