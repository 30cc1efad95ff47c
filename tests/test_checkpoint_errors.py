"""Damaged checkpoints (issue 9 item 6): whatever entry of a checkpoint is damaged, reading it raises one
CheckpointError whose one-line message names the file and the entry; resuming changes nothing (not the global RNG,
not the file); the CLI prints one line and exits with status 2. The damaged files are built from a real one."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from course_lib.training import cli, data
from course_lib.training.checkpoint import CheckpointError, load_model, read_checkpoint
from course_lib.training.config import TrainConfig
from course_lib.training.loop import Trainer
from course_lib.model.tiny import TinyDeepSeek
from tiny_models import tiny_config

TINY = tiny_config()
FAST = TrainConfig(steps=2, batch_size=4, seq_len=16, warmup_steps=1, eval_interval=2, eval_tokens=128)
CLI_SIZES = ["--dim", "32", "--n-layers", "2", "--n-heads", "2", "--expert-dim", "16", "--max-seq-len", "32",
             "--mtp-depth", "1", "--batch-size", "4", "--seq-len", "16", "--eval-tokens", "128", "--device", "cpu",
             "--no-progress"]


@pytest.fixture(scope="module")
def good(corpus, tmp_path_factory):
    torch.manual_seed(0)
    trainer = Trainer(TinyDeepSeek(TINY), corpus, FAST, "cpu")
    trainer.train(progress=False)
    path = tmp_path_factory.mktemp("good") / "good.pt"
    trainer.save(path)
    return path


def json_edit(entry, edit):
    def mutate(state):
        value = json.loads(state[entry])
        edit(value)
        state[entry] = json.dumps(value)
    return mutate


def setitem(entry, value):
    def mutate(state):
        state[entry] = value
    return mutate


def history_edit(edit):
    return json_edit("meta", lambda meta: edit(meta["history"]))


def optimizer_edit(edit):
    return lambda state: edit(state["optimizer"])


def first_weight(state):
    return next(iter(state["model"]))


DAMAGES = {  # name: (how the good checkpoint is damaged, what the message names)
    "model_config a number": (setitem("model_config", 5), "'model_config'"),
    "model_config JSON of a number": (setitem("model_config", "5"), "'model_config'"),
    "model_config malformed JSON": (setitem("model_config", '{"dim": 32,'), "'model_config'"),
    "model_config a wrong type": (json_edit("model_config", lambda c: c.update(dim="32")), "'model_config'"),
    "model_config an unknown field": (json_edit("model_config", lambda c: c.update(width=3)), "'model_config'"),
    "model_config impossible sizes": (json_edit("model_config", lambda c: c.update(top_k=99)), "'model_config'"),
    "train_config malformed JSON": (setitem("train_config", "{]"), "'train_config'"),
    "train_config a list": (setitem("train_config", "[1, 2]"), "'train_config'"),
    "train_config a bad value": (json_edit("train_config", lambda c: c.update(lr=-1)), "'train_config'"),
    "train_config an unknown dtype": (json_edit("train_config", lambda c: c.update(dtype="fp8")), "'train_config'"),
    "meta malformed JSON": (setitem("meta", '{"step": 2'), "'meta'"),
    "meta a tensor": (setitem("meta", torch.zeros(2)), "'meta'"),
    "tokenizer chars missing": (json_edit("meta", lambda m: m.pop("chars")), "'meta'"),
    "tokenizer chars a number": (json_edit("meta", lambda m: m.update(chars=96)), "'meta'"),
    "tokenizer chars repeated": (json_edit("meta", lambda m: m.update(chars="a" * 96)), "'meta'"),
    "tokenizer chars too few": (json_edit("meta", lambda m: m.update(chars=m["chars"][:50])), "'meta'"),
    "n_train missing": (json_edit("meta", lambda m: m.pop("n_train")), "'meta'"),
    "step a string": (json_edit("meta", lambda m: m.update(step="2")), "'meta'"),
    "step negative": (json_edit("meta", lambda m: m.update(step=-1)), "'meta'"),
    "history missing": (json_edit("meta", lambda m: m.update(history=None)), "history"),
    "history a field missing": (history_edit(lambda h: h.pop("loss")), "history"),
    "history an unknown field": (history_edit(lambda h: h.update(extra=[])), "history"),
    "history a column not a list": (history_edit(lambda h: h.update(loss=1.0)), "history"),
    "history a string in a column": (history_edit(lambda h: h["loss"].__setitem__(0, "x")), "history"),
    "history columns of different lengths": (history_edit(lambda h: h["loss"].pop()), "history"),
    "history loads not nested": (history_edit(lambda h: h.update(loads=[1, 2])), "history"),
    "history shorter than step": (json_edit("meta", lambda m: m.update(step=5)), "history"),
    "model not a dict": (setitem("model", [torch.zeros(2)]), "'model'"),
    "model a weight missing": (lambda s: s["model"].pop(first_weight(s)), "'model'"),
    "model a weight of the wrong shape": (lambda s: s["model"].update({first_weight(s): torch.zeros(3)}), "'model'"),
    "model a NaN weight": (lambda s: s["model"][first_weight(s)].view(-1).__setitem__(0, float("nan")), "'model'"),
    "model an integer bias": (lambda s: s["model"].update({"blocks.1.ffn.bias": torch.zeros(8, dtype=torch.long)}),
                              "'model'"),
    "optimizer not a dict": (setitem("optimizer", [1, 2]), "'optimizer'"),
    "optimizer without param_groups": (optimizer_edit(lambda o: o.pop("param_groups")), "'optimizer'"),
    "optimizer a group of the wrong size": (optimizer_edit(lambda o: o["param_groups"][0]["params"].pop()),
                                            "'optimizer'"),
    "optimizer one group": (optimizer_edit(lambda o: o["param_groups"].pop()), "'optimizer'"),
    "optimizer a setting missing": (optimizer_edit(lambda o: o["param_groups"][0].pop("betas")), "'optimizer'"),
    "optimizer a moment of the wrong shape": (optimizer_edit(lambda o: o["state"][0].update(exp_avg=torch.zeros(3))),
                                              "'optimizer'"),
    "optimizer a state without step": (optimizer_edit(lambda o: o["state"][0].pop("step")), "'optimizer'"),
    "optimizer state a number": (optimizer_edit(lambda o: o.update(state=3)), "'optimizer'"),
    "data_rng too short": (lambda s: s.update(data_rng=s["data_rng"][:100]), "'data_rng'"),
    "data_rng a string": (setitem("data_rng", "seed 0"), "'data_rng'"),
    "torch_rng float": (lambda s: s.update(torch_rng=s["torch_rng"].float()), "'torch_rng'"),
    "cuda_rng a number": (setitem("cuda_rng", 0), "'cuda_rng'"),
    "an entry missing": (lambda s: s.pop("optimizer"), "lacks the entries ['optimizer']"),
    "another format": (setitem("format", "nanogpt"), "not a checkpoint of this course"),
    "another version": (setitem("version", 2), "checkpoint version 2"),
    "a version string": (setitem("version", "1"), "checkpoint version '1'"),
}
FILES = {  # damage to the file itself
    "truncated": lambda content: content[: len(content) // 2],
    "cut by one byte": lambda content: content[:-1],
    "empty": lambda content: b"",
    "random bytes": lambda content: bytes(range(256)) * 10,
    "text": lambda content: b"not a checkpoint\n",
}


def damaged(good, tmp_path, mutate):
    state = torch.load(good, weights_only=True)
    mutate(state)
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    return path


def check_error(error, path, fragment):
    message = str(error.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message and len(message) < 600, message


@pytest.mark.parametrize("mutate, fragment", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_entry_raises_one_checkpoint_error_naming_file_and_entry(good, corpus, tmp_path, mutate, fragment):
    path = damaged(good, tmp_path, mutate)
    content = path.read_bytes()
    rng = torch.get_rng_state()
    for read in (read_checkpoint, load_model, lambda p: Trainer.resume(p, corpus, "cpu")):
        with pytest.raises(CheckpointError) as error:
            read(path)
        check_error(error, path, fragment)
    assert torch.equal(torch.get_rng_state(), rng)  # resume changed nothing before refusing
    assert path.read_bytes() == content


@pytest.mark.parametrize("damage", FILES.values(), ids=FILES.keys())
def test_a_damaged_file_raises_one_checkpoint_error_naming_it(good, tmp_path, damage):
    path = tmp_path / "damaged.pt"
    path.write_bytes(damage(good.read_bytes()))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    check_error(error, path, "not a readable checkpoint")


@pytest.mark.parametrize("name", ["model_config a number", "meta malformed JSON", "tokenizer chars missing",
                                  "history columns of different lengths", "optimizer a moment of the wrong shape",
                                  "data_rng too short", "another version"])
def test_the_cli_prints_one_line_exits_2_and_overwrites_nothing(good, tmp_path, capsys, name):
    mutate, fragment = DAMAGES[name]
    path = damaged(good, tmp_path, mutate)
    content = path.read_bytes()
    code = cli.main(["--resume", str(path), "--save", str(path), "--json", str(tmp_path / "m.json"),
                       "--steps", "3", *CLI_SIZES])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err and fragment in err, err
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt"]


@pytest.mark.slow  # a fresh interpreter imports torch: about 10 s on a busy machine
def test_the_real_command_exits_with_status_2(good, tmp_path):
    path = damaged(good, tmp_path, DAMAGES["model_config a number"][0])
    run = subprocess.run([sys.executable, "-m", "course_lib.training", "--resume", str(path), "--save", str(path),
                          "--steps", "3", *CLI_SIZES], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "'model_config'" in run.stderr and "Traceback" not in run.stderr


def test_a_good_checkpoint_still_resumes(good, corpus):
    trainer = Trainer.resume(good, corpus, "cpu", steps=3)
    assert trainer.step == 2 and len(trainer.history.loss) == 2
    trainer.train(progress=False)
    assert trainer.step == 3


def test_the_table_covers_every_entry(good):
    state = torch.load(good, weights_only=True)
    named = {fragment.strip("'") for _, fragment in DAMAGES.values()}
    assert set(state) - {"format", "version"} <= named | {"meta"}, sorted(set(state) - named)
    assert copy.deepcopy(state).keys() == state.keys()
