"""The command line's one dialect (:mod:`visattn.commands.common`), read off every subcommand's parser:
one visible spelling per meaning (an option's ``dest``), one meaning per visible spelling (its
``dest`` and shape), the shared meanings in the commands that take them; other spellings parse as
hidden aliases; exit codes are decided by :func:`visattn.cli.main`."""
import argparse
import importlib

import pytest

import visattn.commands.demo
from visattn._extras import MissingExtraError
from visattn.cli import COMMANDS, main
from visattn.commands.common import given_run
from visattn.comparison import RunFailedError

# meaning -> (its spelling, the commands that take it, spellings of it that --help must not list)
SHARED = {
    "a trained run to read": ("--run", {"eval", "predict", "explain", "plot", "export"},
                              {"--checkpoint", "--run-dir", "--source"}),
    "the one file a command writes": ("--output", {"eval", "plot", "export", "bench"},
                                      {"--output-file", "--out", "-o"}),
    "the folder a command writes into": ("--output-dir", {"train", "predict", "explain", "compare"},
                                         {"--out-dir", "--outdir", "--output-folder"}),
    "a config override": ("--set", {"train", "eval", "predict", "explain", "export", "compare"},
                          {"--override", "--opts"}),
    "inputs per forward pass": ("--batch-size", {"eval", "predict", "bench"}, {"--batch", "--bs"}),
    "mixed precision": ("--amp", {"eval", "predict"}, {"--precision", "--autocast"}),
    "where the model runs": ("--device", {"bench", "eval", "predict", "explain"}, set()),
    "the sliding window": ("--crop-size", {"eval", "predict"}, {"--crop", "--window"}),
}


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"visattn {command}")
    importlib.import_module(f"visattn.commands.{command}").add_arguments(parser)
    return parser


def _actions(command: str, visible: bool) -> list[argparse.Action]:
    return [a for a in _parser(command)._actions
            if not isinstance(a, argparse._HelpAction) and (a.help is not argparse.SUPPRESS) == visible]


def _spelling(action: argparse.Action) -> str:
    return " ".join(action.option_strings) or f"<{action.dest}>"


def _shape(action: argparse.Action) -> tuple:
    """What a spelling must keep wherever it appears: where it goes, how many values, their name."""
    return action.dest, type(action).__name__, action.nargs, action.metavar


def _options() -> list[tuple[str, argparse.Action]]:
    return [(command, action) for command in COMMANDS for action in _actions(command, visible=True)]


def test_every_command_is_walked():
    assert set(COMMANDS) == {"demo", "train", "eval", "predict", "models", "explain", "plot", "compare", "bench",
                             "export"}
    assert all(len(option.option_strings) <= 1 for _, option in _options())  # no visible second spelling


def test_one_spelling_per_meaning():
    spellings: dict[str, set[str]] = {}
    for command, option in _options():
        spellings.setdefault(option.dest, set()).add(_spelling(option))
    assert {dest: s for dest, s in spellings.items() if len(s) > 1} == {}


def test_one_meaning_per_spelling():
    shapes: dict[str, dict[tuple, list[str]]] = {}
    for command, option in _options():
        shapes.setdefault(_spelling(option), {}).setdefault(_shape(option), []).append(command)
    assert {spelling: s for spelling, s in shapes.items() if len(s) > 1} == {}


@pytest.mark.parametrize("meaning", SHARED)
def test_shared_meanings_are_spelled_the_one_way(meaning):
    spelling, commands, others = SHARED[meaning]
    visible = {command: {_spelling(a) for a in _actions(command, visible=True)} for command in COMMANDS}
    assert {command for command, s in visible.items() if spelling in s} == commands
    assert {command: s & others for command, s in visible.items() if s & others} == {}


def test_no_positional_reads_a_run_visibly():
    for command, option in _options():
        if not option.option_strings:
            assert option.metavar != "RUN_DIR" and "run" not in option.dest, command


def test_hidden_spellings_are_aliases_of_listed_options():
    for command in COMMANDS:
        listed = {a.dest for a in _actions(command, visible=True)}
        for alias in _actions(command, visible=False):
            dest = alias.dest.removesuffix("_positional") if not alias.option_strings else alias.dest
            assert dest in listed, (command, _spelling(alias))


@pytest.mark.parametrize(("argv", "expected"), [
    (["predict", "a.png", "--output", "out"], {"output_dir": "out"}),
    (["explain", "a.png", "--output", "out", "--modules", "head.sa", "blocks.*"],
     {"output_dir": "out", "module_paths": ["head.sa", "blocks.*"]}),
    (["train", "--output", "runs/x"], {"output_dir": "runs/x"}),
    (["bench", "--batch", "4"], {"batch_size": 4}),
    (["compare", "--output", "c", "--set", "a=1", "b=2", "--seeds", "1", "--set", "c=3"],
     {"output_dir": "c", "overrides": ["a=1", "b=2", "c=3"]}),
])
def test_hidden_aliases_parse_into_the_listed_option(argv, expected):
    args = _parser(argv[0]).parse_args(argv[1:])
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize("command", ["plot", "export"])
def test_the_run_is_read_once(command):
    parser = _parser(command)
    assert given_run(parser.parse_args(["--run", "r"])) == "r" == given_run(parser.parse_args(["r"]))
    for argv in ([], ["r", "--run", "r"]):
        with pytest.raises(ValueError, match="give the run directory once: --run RUN_DIR"):
            given_run(parser.parse_args(argv))


@pytest.mark.parametrize(("raised", "code", "message"), [
    (ValueError("bad\n  value"), 2, "visattn demo: error: bad value\n"),
    (FileNotFoundError("no such file x"), 2, "visattn demo: error: no such file x\n"),
    (FileExistsError("x holds something else"), 2, "visattn demo: error: x holds something else\n"),
    (MissingExtraError("av is not installed: pip install 'visattn[video]'"), 2,
     "visattn demo: error: av is not installed: pip install 'visattn[video]'\n"),
    (KeyboardInterrupt(), 130, "visattn demo: interrupted\n"),
    (KeyboardInterrupt("run it again"), 130, "visattn demo: interrupted; run it again\n"),
])
def test_main_decides_exit_codes(monkeypatch, capsys, raised, code, message):
    def run(args):
        raise raised

    monkeypatch.setattr(visattn.commands.demo, "run", run)
    assert main(["demo"]) == code
    assert capsys.readouterr().err == message


def test_main_passes_results_and_shows_tracebacks_of_bugs_only_under_debug(monkeypatch, capsys):
    monkeypatch.setattr(visattn.commands.demo, "run", lambda args: 1)
    assert main(["demo"]) == 1
    monkeypatch.setattr(visattn.commands.demo, "run", lambda args: None)
    assert main(["demo"]) == 0

    def run(args):
        raise RuntimeError("a bug\non two lines")

    monkeypatch.setattr(visattn.commands.demo, "run", run)
    line = "visattn demo: error: RuntimeError: a bug on two lines (visattn --debug demo ... shows where)\n"
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == line
    for argv in (["--debug", "demo"], ["demo", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and 'raise RuntimeError("a bug' in err
        assert err.endswith(line)


def test_errors_of_the_file_system_are_one_line_exit_2(monkeypatch, capsys):
    """A run-dir component too long for the file system, a full disk: the OSError's message, no traceback."""
    def run(args):
        raise OSError(28, "No space left on device", "/runs/x/model.safetensors")

    monkeypatch.setattr(visattn.commands.demo, "run", run)
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == (
        "visattn demo: error: [Errno 28] No space left on device: '/runs/x/model.safetensors'\n")


@pytest.mark.parametrize(("raised", "code", "message"), [
    (KeyboardInterrupt(), 130, "visattn compare: interrupted; run the same command again to continue\n"),
    (RunFailedError("1 run(s) failed: fcn seed 0 (exit 1: see its log)"), 1,
     "visattn compare: 1 run(s) failed: fcn seed 0 (exit 1: see its log)\n"),
])
def test_compare_says_how_to_continue(monkeypatch, capsys, raised, code, message):
    def compare(*args, **kwargs):
        raise raised

    monkeypatch.setattr(importlib.import_module("visattn.comparison"), "compare", compare)
    assert main(["compare", "--models", "fcn"]) == code
    assert capsys.readouterr().err == message


def test_bad_option_values_exit_2_before_running(capsys):
    for argv, message in ((["bench", "--reps", "0"], "--reps: must be at least 1, got 0"),
                          (["compare", "--jobs", "x"], "--jobs: expected an integer, got 'x'"),
                          (["predict", "a.png", "--batch-size", "0"], "--batch-size: must be at least 1, got 0")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
