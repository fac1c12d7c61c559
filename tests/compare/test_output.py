"""The layout of a comparison's output directory, and what a comparison refuses to do with one it did
not write: follow a symbolic link, delete files that are not a run's, read a damaged compare.yaml or
final.json (each refused, exit status 2 naming the path, before anything is trained)."""
import json

import pytest

from visattn.cli import main
from visattn.comparison import FINAL_METRICS, CompareDir, Entry
from visattn.engine.config import load_config


def test_compare_dir_layout(tmp_path):
    cdir = CompareDir(tmp_path)
    entry = Entry("attnet-bam", "attnet", "bam")
    assert cdir.run(entry, 2).path == tmp_path / "runs" / "attnet-bam" / "seed2"
    assert cdir.log(entry, 2) == tmp_path / "logs" / "attnet-bam-seed2.log"
    with pytest.raises(ValueError, match="comparison entry '../x' holds a path separator"):
        cdir.run(Entry("../x", "fcn", None), 0)


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def claimed(tmp_path, recipe_file, tiny):
    """An output directory holding the spec of ``compare --models fcn danet --seeds 1`` and a folder
    of someone else's (``notes.txt``, ``sub/data.bin``); ``(run, command, foreign folder)``."""
    out = tmp_path / "cmp"
    CompareDir(out).claim(load_config(recipe_file, tiny), [], 1)
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    (foreign / "sub" / "data.bin").write_bytes(b"\0\1")
    command = ["compare", "--config", recipe_file, "--models", "fcn", "danet", "--seeds", "1", "--set", *tiny,
               "--output", str(out)]
    return out / "runs" / "fcn" / "seed0", command, foreign


def test_a_symlinked_run_folder_is_refused_and_its_target_kept(claimed, capsys):
    run, command, foreign = claimed
    run.parent.mkdir(parents=True)
    run.symlink_to(foreign, target_is_directory=True)
    before = _files(foreign)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"{run} is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert _files(foreign) == before
    assert not (run.parents[1] / "danet").exists()  # refused before anything trained


def test_a_run_folder_holding_foreign_files_is_refused_and_kept(claimed, capsys):
    run, command, foreign = claimed
    run.parent.mkdir(parents=True)
    foreign.rename(run)
    (run / "config.yaml").write_text("a run's name, someone else's file\n")
    before = _files(run)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"run directory {run} holds files that are not a run's (notes.txt, sub)" in err
    assert _files(run) == before
    assert not (run.parents[1] / "danet").exists()


@pytest.mark.parametrize("spec", ["!!python/object/apply:os.system ['echo owned']\n", "- a list\n",
                                  "recipe: [1, 2]\n", "recipe: {a: [\n"])
def test_a_damaged_compare_yaml_is_refused_naming_it(claimed, capsys, spec):
    run, command, _ = claimed
    path = run.parents[2] / "compare.yaml"
    path.write_text(spec)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1 and "owned" not in err
    assert path.read_text() == spec


@pytest.mark.parametrize("record", ['{"step": 2}', "[]", "{not json", '{"step": 2, "total": 2, "seconds": 1, '
                                    '"threads": 1, "classes": ["a"], "metrics": {"mIoU": 0.5, "mAcc": "x"}}'])
def test_a_damaged_final_record_is_refused_before_any_training(claimed, capsys, record):
    run, command, _ = claimed
    run.mkdir(parents=True)
    (run / FINAL_METRICS).write_text(record)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"{run / FINAL_METRICS}" in err and "delete it to train the run again" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run.parents[1] / "danet").exists()
    assert json.dumps(sorted(p.name for p in run.iterdir())) == json.dumps([FINAL_METRICS])
