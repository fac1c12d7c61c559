import visattn
from visattn.cli import main


def test_demo_prints_a_row_per_module(capsys):
    assert main(["demo", "--channels", "64", "--size", "5", "7"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert names == visattn.list_attentions()
    assert all("(1, 64, 5, 7)" in line for line in lines[1:])
    columns = {line.index("(1, 64, 5, 7)") for line in lines[1:]} | {lines[0].index("output shape")}
    assert len(columns) == 1  # every row aligned with the header, the longest name included


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_demo_shows_every_module_away_from_the_identity(capsys):
    assert main(["demo", "--channels", "64", "--size", "5", "7"]) == 0
    change = {line.split()[0]: float(line.split()[-1]) for line in capsys.readouterr().out.strip().splitlines()[1:]}
    assert all(value > 0 for value in change.values()), change  # residual modules too (gamma, Non-local's conv_out)
