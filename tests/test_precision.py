"""Precision of the routing state (issue 9 item 3): the bias and the load counts stay float32 whatever the dtype
of the layer or the model, routing runs in float32 under autocast, and a bfloat16-autocast training run trains
like float32 with float32 routing state."""

import dataclasses
import json

import pytest
import torch

from course_lib.training.step import train_step
from course_lib.training.config import TrainConfig
from course_lib.training.loop import Trainer
from course_lib.training import cli
from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe.layer import DeepSeekMoE
from tiny_models import tiny_config

TINY = tiny_config()
FAST = TrainConfig(steps=30, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, eval_interval=30,
                         eval_tokens=512)

CASTS = {  # every way nn.Module casts a layer or a model
    ".to(bfloat16)": lambda m: m.to(torch.bfloat16),
    ".to(float16)": lambda m: m.to(torch.float16),
    ".half()": lambda m: m.half(),
    ".bfloat16()": lambda m: m.bfloat16(),
    ".double()": lambda m: m.double(),
    ".to(cpu, bfloat16)": lambda m: m.to("cpu", torch.bfloat16),
    ".to(dtype=float16)": lambda m: m.to(dtype=torch.float16),
    ".type(bfloat16)": lambda m: m.type(torch.bfloat16),
}


def test_the_issue_example_a_bf16_layer_takes_steps_of_0_001():
    moe = DeepSeekMoE(4, 4, 4, 0, 2).to(torch.bfloat16)
    with torch.no_grad():
        moe.bias.fill_(1.0)
    moe.load.copy_(torch.tensor([10., 0, 0, 0]))
    moe.update_bias(0.001)
    assert moe.bias.dtype == torch.float32
    assert moe.bias.tolist() == torch.tensor([0.999, 1.001, 1.001, 1.001], dtype=torch.float32).tolist()


@pytest.mark.parametrize("cast", CASTS.values(), ids=CASTS.keys())
@pytest.mark.parametrize("whole_model", [False, True], ids=["layer", "model"])
def test_every_cast_keeps_the_routing_state_float32_with_its_values(cast, whole_model, tiny_model):
    model = tiny_model
    bias = torch.linspace(-0.0123, 0.0371, TINY.n_routed_experts)  # values bf16/fp16 cannot hold
    for moe in model.moe_layers():
        moe.bias.copy_(bias)
        moe.load.fill_(1000.0)
    cast(model if whole_model else model.moe_layers()[0])
    for moe in model.moe_layers():
        assert moe.bias.dtype == moe.load.dtype == torch.float32
        assert torch.equal(moe.bias, bias) and torch.equal(moe.load, torch.full_like(moe.load, 1000.0))
        moe.load += 1.0  # a bf16 count would stay at 1000 (spacing 8 there)
        assert moe.load[0] == 1001.0
    assert model.moe_layers()[0].w_gate.dtype != torch.float32  # the weights were cast, the routing state not


def test_loading_a_state_dict_keeps_the_bias_float32():
    source = DeepSeekMoE(8, 4, 4, 0, 2).to(torch.bfloat16)
    target = DeepSeekMoE(8, 4, 4, 0, 2)
    target.load_state_dict(source.state_dict())
    assert target.bias.dtype == torch.float32
    half_state = {k: v.to(torch.bfloat16) for k, v in target.state_dict().items()}
    for assign in (False, True):
        fresh = DeepSeekMoE(8, 4, 4, 0, 2)
        fresh.load_state_dict(half_state, assign=assign)
        assert fresh.bias.dtype == torch.float32, assign
    with pytest.raises(TypeError, match="bias must be a floating-point"):
        DeepSeekMoE(8, 4, 4, 0, 2).load_state_dict({**target.state_dict(), "bias": torch.zeros(4, dtype=torch.long)})


def test_routing_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    moe = DeepSeekMoE(64, 16, 16, 1, 4)
    x = torch.randn(4096, 64)
    reference = moe.route(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, weights, indices = moe.route(x)
        out = moe(x)
    assert scores.dtype == weights.dtype == torch.float32
    assert torch.equal(scores, reference[0]) and torch.equal(weights, reference[1])
    assert torch.equal(indices, reference[2])  # in bf16, about 90 of 4096 tokens change their experts
    assert moe.last_scores.dtype == torch.float32 and torch.isfinite(out).all()


def test_a_bf16_layer_routes_in_float32():
    torch.manual_seed(0)
    moe = DeepSeekMoE(16, 8, 8, 1, 2)
    x = torch.randn(64, 16).bfloat16()
    moe = moe.bfloat16()
    out = moe(x)
    assert out.dtype == torch.bfloat16 and moe.last_scores.dtype == torch.float32
    assert torch.isfinite(out).all() and moe.load.sum() == 64 * 2


@pytest.mark.slow  # bf16 on a CPU: about 15 s on a busy 2-core machine
def test_bf16_autocast_training_trains_like_float32_and_keeps_float32_state(corpus):
    results = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        trainer = Trainer(TinyDeepSeek(TINY), corpus, dataclasses.replace(FAST, dtype=dtype), "cpu")
        before = trainer.evaluate(512)["val_loss"]
        history = trainer.train(progress=False)
        assert history.val_loss[-1] < before - 0.5, dtype  # it trains
        results[dtype] = history
        for moe in trainer.model.moe_layers():
            assert moe.bias.dtype == moe.load.dtype == torch.float32
            assert moe.bias.abs().sum() > 0  # the loss-free update ran
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert all(v.dtype == torch.float32 for s in trainer.optimizer.state.values()
                   for k, v in s.items() if k != "step")
    f32, bf16 = results["float32"], results["bfloat16"]
    assert bf16.val_loss[-1] == pytest.approx(f32.val_loss[-1], rel=0.03)
    assert sum(bf16.loss[-5:]) == pytest.approx(sum(f32.loss[-5:]), rel=0.03)


def test_dtype_is_validated_saved_and_given_by_the_cli(corpus, tmp_path, capsys):
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        train_step(TinyDeepSeek(TINY), torch.optim.SGD(TinyDeepSeek(TINY).parameters(), lr=0.1),
                         [torch.zeros(2, 9, dtype=torch.long)], dtype="bf16")
    path = tmp_path / "bf16.pt"
    code = cli.main(["--dtype", "bfloat16", "--steps", "2", "--device", "cpu", "--dim", "32", "--n-layers", "2",
                       "--n-heads", "2", "--expert-dim", "16", "--batch-size", "4", "--seq-len", "16",
                       "--max-seq-len", "32", "--eval-tokens", "64", "--no-progress", "--save", str(path),
                       "--json", str(tmp_path / "m.json")])
    assert code == 0
    assert json.loads((tmp_path / "m.json").read_text())["train_config"]["dtype"] == "bfloat16"
    resumed = Trainer.resume(path, corpus, "cpu", steps=3)
    assert resumed.cfg.dtype == "bfloat16"
    # a checkpoint written before TrainConfig.dtype existed resumes in float32
    state = torch.load(path, weights_only=True)
    config = json.loads(state["train_config"])
    del config["dtype"]
    state["train_config"] = json.dumps(config)
    torch.save(state, tmp_path / "old.pt")
    assert Trainer.resume(tmp_path / "old.pt", corpus, "cpu").cfg.dtype == "float32"
    capsys.readouterr()


# ------------------------------------------------------------------ every layer that holds routing state (issue 18)
def _expert_parallel_layer():
    from course_lib.parallel.expert_parallel.layer import ExpertParallelMoE
    return ExpertParallelMoE(DeepSeekMoE(8, 4, 8, 1, 2), rank=1, world_size=2)  # built without a process group


ROUTING_LAYERS = {"DeepSeekMoE": lambda: DeepSeekMoE(8, 4, 8, 1, 2), "ExpertParallelMoE": _expert_parallel_layer}


@pytest.mark.parametrize("cast", CASTS.values(), ids=CASTS.keys())
@pytest.mark.parametrize("make", ROUTING_LAYERS.values(), ids=ROUTING_LAYERS.keys())
def test_every_routing_layer_keeps_its_routing_state_float32_under_every_cast(make, cast):
    layer = make()
    bias = torch.linspace(-0.0123, 0.0371, 8)  # values bf16/fp16 cannot hold
    with torch.no_grad():
        layer.bias.copy_(bias)
        layer.load.fill_(1001.0)
    cast(layer)
    assert layer.bias.dtype == layer.load.dtype == torch.float32
    assert torch.equal(layer.bias, bias) and torch.equal(layer.load, torch.full((8,), 1001.0))
    assert layer.w_up.dtype != torch.float32  # the weights were cast


@pytest.mark.parametrize("make", ROUTING_LAYERS.values(), ids=ROUTING_LAYERS.keys())
def test_every_routing_layer_loads_a_bf16_state_dict_as_float32(make):
    bias = torch.linspace(-0.0123, 0.0371, 8)
    half_state = {k: v.to(torch.bfloat16) for k, v in make().state_dict().items()}
    half_state["bias"] = bias.to(torch.bfloat16)
    for assign in (False, True):
        layer = make()
        layer.load_state_dict(half_state, assign=assign)
        assert layer.bias.dtype == torch.float32 and torch.equal(layer.bias, bias.to(torch.bfloat16).float())


def test_every_module_class_that_registers_routing_state_keeps_it_float32():
    """The kind, not the instance: any nn.Module of course_lib that registers a ``bias`` or ``load`` buffer
    inherits the one mechanism (moe.RoutingStateModule)."""
    import importlib
    import inspect
    import pkgutil

    import course_lib
    from course_lib.moe.layer import RoutingStateModule

    holders = []
    for info in pkgutil.walk_packages(course_lib.__path__, "course_lib."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, torch.nn.Module):
                continue
            source = inspect.getsource(cls)
            if 'register_buffer("bias"' in source or 'register_buffer("load"' in source:
                holders.append(cls)
                assert issubclass(cls, RoutingStateModule), cls
    assert {cls.__name__ for cls in holders} >= {"DeepSeekMoE"}
    from course_lib.moe.layer import DeepSeekMoE
    from course_lib.parallel.expert_parallel.layer import ExpertParallelMoE
    assert issubclass(ExpertParallelMoE, DeepSeekMoE)  # one rank's part of the layer is the layer: the same state
