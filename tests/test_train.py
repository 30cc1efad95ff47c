"""The training loop: loss goes down, balancing works where it should and nowhere else, resume is exact,
checkpoints fail loudly and safely, NaN stops training, the CLI writes its JSON."""

import dataclasses
import json

import pytest
import torch

from course_lib.training.step import train_step, TrainingDiverged
from course_lib.training.config import lr_at, TrainConfig
from course_lib.training.loop import Trainer
from course_lib.training.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_model, read_checkpoint
from course_lib.training import cli
from course_lib.precision import linear
from course_lib.model.tiny import TinyDeepSeek
from tiny_models import tiny_config

TINY = tiny_config(mtp_depth=0)
FAST = TrainConfig(steps=20, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, eval_interval=10,
                         eval_tokens=512)


def make_trainer(corpus, model_cfg=TINY, seed=0, **changes):
    torch.manual_seed(seed)
    return Trainer(TinyDeepSeek(model_cfg), corpus, dataclasses.replace(FAST, seed=seed, **changes), "cpu")


def test_a_few_steps_reduce_the_loss(corpus):
    trainer = make_trainer(corpus)
    before = trainer.evaluate(512)["val_loss"]
    history = trainer.train(progress=False)
    assert len(history.loss) == 20 and history.eval_step == [10, 20]
    assert history.val_loss[-1] < before - 0.5  # from about log(96) = 4.56 toward the unigram entropy
    assert sum(history.loss[-5:]) < sum(history.loss[:5])


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4) and lr_at(100, cfg) == pytest.approx(1e-4)


def test_the_bias_moves_toward_balance_from_a_skewed_start(corpus):
    trainer = make_trainer(corpus, balance="loss_free", gamma=0.05, lr=0.0, min_lr=0.0, steps=30)  # only the bias learns
    moe = trainer.model.moe_layers()[0]
    moe.bias[0] = 1.0  # every token picks expert 0 (scores lie in (0, 1))
    trainer.train(10, progress=False)
    assert float(moe.bias[0]) == pytest.approx(1.0 - 10 * 0.05)  # overloaded every step: down by gamma each time
    trainer.train(20, progress=False)
    maxvio = trainer.history.maxvio_batch
    assert maxvio[0] == pytest.approx(8 / 2 - 1)  # expert 0 holds every token's first choice: load 4x the mean
    assert sum(maxvio[-10:]) / 10 < 1.5


def test_loss_free_balances_better_than_no_balancing(corpus):
    runs = {}
    for mode in ("none", "loss_free"):
        trainer = make_trainer(corpus, balance=mode, gamma=0.02, steps=40, eval_interval=40)
        trainer.train(progress=False)
        runs[mode] = trainer.summary(last_steps=15)
    assert runs["loss_free"]["maxvio_batch"] < runs["none"]["maxvio_batch"]
    assert runs["loss_free"]["maxvio_global"] < runs["none"]["maxvio_global"]


def test_biases_change_only_in_loss_free_mode(corpus):
    for mode in ("none", "aux"):
        trainer = make_trainer(corpus, balance=mode, alpha=0.1, steps=3)
        trainer.train(progress=False)
        assert all(float(m.bias.abs().sum()) == 0 for m in trainer.model.moe_layers())
    assert trainer.history.balance_loss[0] > 0  # aux: alpha * sum f P, about alpha at balance


def test_aux_loss_sends_gradient_to_the_router(corpus):
    grads = {}
    for alpha in (0.0, 1.0):
        trainer = make_trainer(corpus, balance="aux", alpha=alpha)
        batch = corpus.get_batch("train", 4, 32, torch.Generator().manual_seed(0))
        train_step(trainer.model, trainer.optimizer, [batch], balance_mode="aux", alpha=alpha)
        grads[alpha] = trainer.model.moe_layers()[0].centroids.grad.clone()
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_one_step_counts_the_load_of_every_micro_batch_and_resets_it(corpus):
    trainer = make_trainer(corpus)
    g = torch.Generator().manual_seed(0)
    batches = [corpus.get_batch("train", 4, 32, g) for _ in range(3)]
    result = train_step(trainer.model, trainer.optimizer, batches, balance_mode="loss_free", gamma=0.01)
    assert result.loads.shape == (1, 8) and float(result.loads.sum()) == 3 * 4 * 32 * 2
    moe = trainer.model.moe_layers()[0]
    assert float(moe.load.sum()) == 0
    expected_bias = 0.01 * torch.sign(result.loads[0].mean() - result.loads[0])
    torch.testing.assert_close(moe.bias, expected_bias)


def test_evaluation_changes_neither_loads_nor_biases_nor_the_data_position(corpus):
    trainer = make_trainer(corpus, steps=2)
    trainer.train(progress=False)
    moes = trainer.model.moe_layers()
    biases = [m.bias.clone() for m in moes]
    rng = trainer.data_rng.get_state()
    result = trainer.evaluate(1024)
    assert trainer.model.training
    assert all(float(m.load.sum()) == 0 for m in moes)
    assert all(torch.equal(b, m.bias) for b, m in zip(biases, moes))
    assert torch.equal(rng, trainer.data_rng.get_state())
    assert result["loads"].shape == (1, 8) and float(result["loads"].sum()) == 1024 * 2


def test_resume_continues_exactly_where_it_stopped(corpus, tmp_path):
    cfg = dataclasses.replace(TINY, mtp_depth=1)
    changes = dict(steps=8, micro_batches=2, eval_interval=4, balance="loss_free", seq_alpha=1e-3)
    straight = make_trainer(corpus, cfg, **changes)
    straight.train(progress=False)

    first = make_trainer(corpus, cfg, **changes)
    first.train(5, progress=False)
    first.save(tmp_path / "run.pt")
    resumed = Trainer.resume(tmp_path / "run.pt", corpus, "cpu", model_config=cfg)
    assert resumed.step == 5
    resumed.train(progress=False)

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history.loss == straight.history.loss
    assert resumed.history.mtp_loss == straight.history.mtp_loss and straight.history.mtp_loss[0] > 0
    assert resumed.history.loads == straight.history.loads
    assert resumed.history.val_loss == straight.history.val_loss


def test_checkpoint_errors_are_clear_and_overwrite_nothing(corpus, tmp_path, monkeypatch):
    trainer = make_trainer(corpus, steps=1)
    trainer.train(progress=False)
    good = tmp_path / "good.pt"
    trainer.save(good)
    content = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer.resume(truncated, corpus, "cpu")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this course"):
        read_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": dataclasses.replace(FAST)}, pickled)
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        read_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="dim: checkpoint 32, expected 64"):
        Trainer.resume(good, corpus, "cpu", model_config=dataclasses.replace(TINY, dim=64))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(good)
    assert good.read_bytes() == content  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["good.pt", "truncated.pt", "notes.txt", "foreign.pt", "pickled.pt"])  # no temporary file left


def test_load_model_gives_the_trained_model_and_tokenizer(corpus, tmp_path):
    trainer = make_trainer(corpus, steps=1)
    trainer.train(progress=False)
    trainer.save(tmp_path / "m.pt")
    model, tokenizer = load_model(tmp_path / "m.pt")
    assert tokenizer.chars == corpus.tokenizer.chars and not model.training
    for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_stops_with_the_step_and_what_to_try(corpus):
    trainer = make_trainer(corpus, steps=5)
    trainer.train(2, progress=False)
    with torch.no_grad():
        trainer.model.head.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"step 3 .*lower learning rate"):
        trainer.train(progress=False)
    assert trainer.step == 2 and len(trainer.history.loss) == 2


def test_cli_exits_with_status_3_when_an_fp8_model_diverges(monkeypatch, capsys):
    """A simulated-FP8 model whose embedding holds NaN: the CLI reports the divergence (exit status 3), not a
    ValueError from FP8's quantisation (failed before)."""
    class DivergedFP8(TinyDeepSeek):
        def __init__(self, config):
            super().__init__(config)
            linear.to_fp8(self)
            with torch.no_grad():
                self.embed.weight[:, 0] = float("nan")

    monkeypatch.setattr(cli, "TinyDeepSeek", DivergedFP8)
    code = cli.main(["--steps", "2", "--device", "cpu", "--dim", "32", "--n-layers", "2", "--n-heads", "2",
                       "--expert-dim", "16", "--batch-size", "2", "--seq-len", "16", "--max-seq-len", "16",
                       "--eval-tokens", "64", "--no-progress"])
    assert code == 3 and "Training stopped at step 1" in capsys.readouterr().err


def test_bad_training_settings(corpus):
    with pytest.raises(ValueError, match="balance must be one of"):
        TrainConfig(balance="auxfree")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        Trainer(TinyDeepSeek(TINY), corpus, TrainConfig(seq_len=64), "cpu")


def test_cli_writes_the_final_metrics(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = cli.main(["--balance", "aux", "--mtp-depth", "1", "--steps", "3", "--device", "cpu", "--seed", "1",
                       "--json", str(out), "--dim", "32", "--n-layers", "2", "--n-heads", "2", "--expert-dim", "16",
                       "--batch-size", "4", "--seq-len", "32", "--max-seq-len", "32", "--eval-tokens", "256",
                       "--no-progress", "--save", str(tmp_path / "cli.pt")])
    assert code == 0
    metrics = json.loads(out.read_text())
    for key in ("val_loss", "maxvio_global", "maxvio_batch", "tokens_per_s", "val_mtp_loss", "params_activated"):
        assert isinstance(metrics[key], float | int), key
    assert metrics["step"] == 3 and metrics["train_config"]["balance"] == "aux"
    assert metrics["model_config"]["mtp_depth"] == 1 and len(metrics["history"]["loss"]) == 3
    assert "val loss" in capsys.readouterr().out
    # resuming with a different model configuration is refused with the difference named
    code = cli.main(["--resume", str(tmp_path / "cli.pt"), "--steps", "4", "--device", "cpu", "--dim", "64",
                       "--no-progress"])
    assert code == 2 and "dim: checkpoint 32, expected 64" in capsys.readouterr().err


# ------------------------------------------------------------------ micro-batches of unequal size (issue 18)
def _windows(seed, batch, length):
    return torch.randint(0, TINY.vocab_size, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


def test_micro_batches_of_unequal_size_weigh_by_their_share_of_the_positions():
    """1 and 4 windows as two micro-batches: the same step as one batch of 5 (weighted 1/2 each, they were not)."""
    import copy

    windows = _windows(0, 5, 16)
    torch.manual_seed(0)
    model = TinyDeepSeek(dataclasses.replace(TINY, mtp_depth=2))
    twin = copy.deepcopy(model)
    whole = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [windows], gamma=0.01)
    split = train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), [windows[:1], windows[1:]],
                             gamma=0.01)
    for field in ("loss", "main_loss", "mtp_loss", "grad_norm"):
        assert getattr(split, field) == pytest.approx(getattr(whole, field), abs=1e-5), field
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_micro_batches_of_different_lengths_give_the_mean_over_all_their_positions():
    parts = [_windows(1, 3, 8), _windows(2, 2, 16)]  # 24 and 32 positions
    torch.manual_seed(0)
    model = TinyDeepSeek(dataclasses.replace(TINY, mtp_depth=0))
    with torch.no_grad():
        logits = torch.cat([model(t[:, :-1]).reshape(-1, TINY.vocab_size) for t in parts])
        expected = torch.nn.functional.cross_entropy(logits, torch.cat([t[:, 1:].reshape(-1) for t in parts]))
    result = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), parts)
    assert result.main_loss == pytest.approx(float(expected), abs=1e-6)
