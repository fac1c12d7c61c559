"""Every reader of files that anyone may write (a run's config.yaml, a Hub config.json, compare.yaml,
final.json, metrics.jsonl, class_weights.json, ``_base_`` recipes, ``@LIST`` files), fed malformed
variants: wrong types, huge sizes and numbers, YAML aliases, keys given twice, traversal names,
truncation, deep nesting, bytes that are not text. Each one is refused with exit 2 or a
``ValueError`` (a ``FileNotFoundError`` for a list naming missing files; class_weights.json, a
cache, is ignored), in a second or so, under a memory limit, and nothing is written anywhere.

The readers run in one subprocess whose address space is limited (``RLIMIT_AS``) to what it holds
after importing visattn plus 2 GiB: before these bounds, the alias file grew to gigabytes and a
config.json of 10**12 classes allocated until ``MemoryError``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import visattn

SRC = Path(visattn.__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")

# nine levels of nine aliases, 9**9 (387 million) strings once expanded, defined where any key is
# allowed (model.kwargs; compare.yaml's entries) so that only the aliases are wrong
ALIASES = "  a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
ALIASES_IN_KWARGS = "model:\n  name: fcn\n  kwargs:\n" + ALIASES.replace("  a", "    a")
VALID_RUN_CONFIG = "model:\n  name: tinyseg:build\ndata:\n  dataset: digits\ntrain:\n  iters: 4\n"

# (reader, case, file name, content): each file is written into a folder of its own
CORPUS = [
    ("run_config", "aliases in data.classes", "config.yaml",
     ALIASES_IN_KWARGS + "data:\n  dataset: folder\n  classes: *a8\n"),
    ("run_config", "aliases in train.loss", "config.yaml", ALIASES_IN_KWARGS + "train:\n  loss: {ce: *a8}\n"),
    ("run_config", "aliases in eval.scales", "config.yaml", ALIASES_IN_KWARGS + "eval:\n  scales: *a8\n"),
    ("run_config", "a key given twice", "config.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n"),
    ("run_config", "10**12 classes", "config.yaml", "data:\n  dataset: folder\n  num_classes: 1000000000000\n"),
    ("run_config", "a model of 10**16 parameters", "config.yaml",
     "model:\n  name: fcn\n  kwargs: {channels: 1000000000000}\n"),
    ("run_config", "a section that is a number", "config.yaml", "train: 3\n"),
    ("run_config", "a list, not a mapping", "config.yaml", "- train\n- data\n"),
    ("run_config", "a long wrong value", "config.yaml", "train:\n  lr: '" + "x" * 100_000 + "'\n"),
    ("run_config", "truncated", "config.yaml", VALID_RUN_CONFIG[:40]),
    ("run_config", "too large", "config.yaml", "# " + "x" * (2 << 20) + "\n"),
    ("run_config", "nested 100000 deep", "config.yaml", "train: " + "[" * 100_000 + "\n"),
    ("run_config", "not UTF-8", "config.yaml", b"\xff\xfe\x00train: 1\n"),
    ("run_config", "code by a traversal name", "config.yaml", "model:\n  name: ../../evil:build\n"),
    ("hub_config", "10**12 classes", "config.json", {"model": "fcn", "num_classes": 10 ** 12}),
    ("hub_config", "a model of 10**16 parameters", "config.json",
     {"model": "fcn", "model_kwargs": {"channels": 10 ** 12}, "num_classes": 2}),
    ("hub_config", "classes of another count", "config.json", {"model": "fcn", "num_classes": 2, "classes": ["a"] * 3}),
    ("hub_config", "num_classes as a string", "config.json", {"model": "fcn", "num_classes": "2"}),
    ("hub_config", "code", "config.json", {"model": "os:system", "num_classes": 2}),
    ("hub_config", "a traversal name", "config.json", {"model": "../../x", "num_classes": 2}),
    ("hub_config", "a list", "config.json", [1, 2]),
    ("hub_config", "truncated", "config.json", '{"model": "fcn", "num_c'),
    ("hub_config", "nested 100000 deep", "config.json", "[" * 100_000),
    ("hub_config", "too large", "config.json", '{"model": "fcn", "pad": "' + "x" * (2 << 20) + '"}'),
    ("compare_yaml", "aliases", "compare.yaml", "entries:\n" + ALIASES + "recipe: {train: {lr: *a8}}\n"),
    ("compare_yaml", "a key given twice", "compare.yaml", "recipe: {}\nrecipe: {}\n"),
    ("compare_yaml", "a list", "compare.yaml", "- recipe\n"),
    ("compare_yaml", "truncated", "compare.yaml", "recipe:\n  train: {lr: [0.1,\n"),
    ("compare_yaml", "too large", "compare.yaml", "# " + "x" * (2 << 20) + "\n"),
    ("final_json", "a list", "final.json", [1, 2]),
    ("final_json", "metrics not an object", "final.json", {"metrics": 3}),
    ("final_json", "truncated", "final.json", '{"metrics": {"mIoU": 0.'),
    ("final_json", "nested 100000 deep", "final.json", "[" * 100_000),
    ("final_json", "too large", "final.json", '{"pad": "' + "x" * (17 << 20) + '"}'),
    ("metrics_jsonl", "a list in line 2", "metrics.jsonl", '{"step": 1}\n[1, 2]\n{"step": 2}\n'),
    ("metrics_jsonl", "a bare { in line 1", "metrics.jsonl", '{\n{"step": 1}\n'),
    ("metrics_jsonl", "no step", "metrics.jsonl", '{"loss": 1}\n'),
    ("metrics_jsonl", "nested 100000 deep", "metrics.jsonl", "[" * 100_000 + "\n"),
    ("metrics_jsonl", "not UTF-8", "metrics.jsonl", b'{"step": 1, "x": "\xff"}\n'),
    ("class_weights_json", "a list", "class_weights.json", [1, 2]),
    ("class_weights_json", "weights of another count", "class_weights.json",
     {"method": "median_frequency", "classes": ["a", "b"], "weights": [1.0]}),
    ("class_weights_json", "negative weights", "class_weights.json",
     {"method": "median_frequency", "classes": ["a", "b"], "weights": [1.0, -1.0]}),
    ("class_weights_json", "nested 100000 deep", "class_weights.json", "[" * 100_000),
    ("class_weights_json", "too large", "class_weights.json", '{"pad": "' + "x" * (17 << 20) + '"}'),
    ("recipe", "a base of aliases", "recipe.yaml",
     {"_base_": "base.yaml", "base.yaml": ALIASES_IN_KWARGS + "eval:\n  scales: *a8\n"}),
    ("recipe", "a base with a key twice", "recipe.yaml",
     {"_base_": "base.yaml", "base.yaml": "train: {}\ntrain: {}\n"}),
    ("recipe", "a base by a traversal name", "recipe.yaml", {"_base_": "../../../../../../../../no/such.yaml"}),
    ("recipe", "bases in a cycle", "recipe.yaml", {"_base_": "recipe.yaml"}),
    ("recipe", "a base that is a number", "recipe.yaml", {"_base_": 3}),
    ("recipe", "a huge _base_ list", "recipe.yaml", {"_base_": ["x.yaml"] * 100_000}),
    ("input_list", "too large", "inputs.txt", "# " + "x" * (17 << 20) + "\n"),
    ("input_list", "a traversal name", "inputs.txt", "../../../../../../../../no/such.png\n"),
    ("input_list", "not UTF-8", "inputs.txt", b"\xff\xfe.png\n"),
    ("input_list", "nothing", "inputs.txt", "# only a comment\n"),
]

# Runs each case's reader in one process under RLIMIT_AS; prints one JSON line per case.
DRIVER = r'''
import contextlib, io, json, os, resource, sys, time, warnings
from pathlib import Path

from visattn.cli import main
from visattn.comparison.output import CompareDir, read_final
from visattn.data.inputs import find_inputs
from visattn.engine.class_weights import read_class_weights
from visattn.engine.config import Config, read_recipe
from visattn.engine.run_dir import RunDir
from visattn.trained import from_pretrained


def resume(folder):
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--resume", folder, "--quiet"])
    return f"exit {code}: {err.getvalue().strip()}"


READERS = {
    "run_config": resume,
    "hub_config": from_pretrained,
    "compare_yaml": lambda folder: CompareDir(folder).claim(Config(), [], 1),
    "final_json": lambda folder: read_final(RunDir(folder)),
    "metrics_jsonl": lambda folder: RunDir(folder).read_metrics(),
    "class_weights_json": lambda folder: read_class_weights(Path(folder) / "class_weights.json", "median_frequency",
                                                           ["a", "b"]),
    "recipe": lambda folder: read_recipe(Path(folder) / "recipe.yaml"),
    "input_list": lambda folder: find_inputs(["@" + str(Path(folder) / "inputs.txt")]),
}

size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), resource.RLIM_INFINITY))
warnings.simplefilter("ignore")
for line in sys.stdin:
    reader, folder = json.loads(line)
    start = time.perf_counter()
    try:
        value = READERS[reader](folder)
        outcome = {"returned": value if isinstance(value, str) else repr(value)[:300]}
    except BaseException as err:
        outcome = {"raised": [c.__name__ for c in type(err).__mro__], "message": str(err)}
    outcome["seconds"] = time.perf_counter() - start
    print(json.dumps(outcome), flush=True)
'''


def _write_case(folder: Path, name: str, content) -> None:
    folder.mkdir(parents=True)
    if isinstance(content, dict) and name.endswith(".yaml"):  # a recipe and the files it names
        files = {k: v for k, v in content.items() if k != "_base_"}
        (folder / name).write_text(json.dumps({"_base_": content["_base_"]}))
        for file, text in files.items():
            (folder / file).write_text(text)
        return
    if isinstance(content, (dict, list)):
        content = json.dumps(content)
    data = content if isinstance(content, bytes) else content.encode()
    (folder / name).write_bytes(data)
    if name == "config.yaml":  # a run directory: a checkpoint to resume
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "latest").write_text("step_0000002")


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """``case id -> outcome`` of every case of :data:`CORPUS`, and the files that appeared, went or changed."""
    root = tmp_path_factory.mktemp("untrusted")
    inputs, cwd, home = root / "inputs", root / "cwd", root / "home"
    cwd.mkdir()
    home.mkdir()
    folders = []
    for i, (reader, case, name, content) in enumerate(CORPUS):
        folder = inputs / f"{i:02d}" / "given"
        _write_case(folder, name, content)
        folders.append((reader, str(folder)))
    before = _tree(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(Path(__file__).parent)]), "HOME": str(home),
           "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": str(tmp_path_factory.mktemp("matplotlib"))}  # its font cache
    proc = subprocess.run([sys.executable, "-c", DRIVER], input="".join(json.dumps(f) + "\n" for f in folders),
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(CORPUS), proc.stderr[-3000:]
    ids = [f"{reader}: {case}" for reader, case, _, _ in CORPUS]
    after = _tree(root)
    changed = sorted(set(before) ^ set(after) | {p for p in set(before) & set(after) if before[p] != after[p]})
    return dict(zip(ids, map(json.loads, lines))), changed


def test_nothing_is_written_anywhere(outcomes):
    """Not in the given folders, the working directory or the home directory (caches)."""
    assert outcomes[1] == []


@pytest.mark.parametrize("reader, case", [(reader, case) for reader, case, _, _ in CORPUS],
                         ids=[f"{reader}: {case}" for reader, case, _, _ in CORPUS])
def test_a_malformed_file_is_refused_quickly_in_one_line(outcomes, reader, case):
    outcome = outcomes[0][f"{reader}: {case}"]
    assert outcome["seconds"] < 20, outcome  # unbounded readers take minutes
    if reader == "run_config":
        assert outcome["returned"].startswith("exit 2: visattn train: error: "), outcome
        message = outcome["returned"]
    elif reader == "class_weights_json":
        assert outcome == {"returned": "None", "seconds": outcome["seconds"]}  # ignored: computed again
        return
    else:
        allowed = ("ValueError", "FileNotFoundError") if reader == "input_list" else ("ValueError",)
        assert set(allowed) & set(outcome.get("raised", ())), outcome
        message = outcome["message"]
    assert "\n" not in message and len(message) < 1000, message
