"""Checkpoints of a training run: ``save_checkpoint`` (``Trainer.save``) writes everything a resume needs, and
``open_checkpoint`` reads one back checking every entry (the configs, the metadata with the tokenizer and the
history, the weights, the optimizer and RNG states), so that a damaged file raises one ``CheckpointError`` naming
the file and the entry before anything is changed. ``load_model`` gives the trained model for generation."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from course_lib.core.runtime import get_device
from course_lib.core.validation import check_int
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.training.config import History, TrainConfig, make_optimizer
from course_lib.training.data import CharTokenizer, Corpus

if TYPE_CHECKING:
    from course_lib.training.loop import Trainer

CHECKPOINT_FORMAT = "course_lib.tiny_deepseek"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a usable checkpoint of this model: truncated, foreign, damaged, or from another
    configuration. The message is one line naming the file and, for a damaged entry, the entry."""


def save_checkpoint(trainer: Trainer, path: str | Path) -> None:
    """``Trainer.save``: everything a resume needs: weights and biases, optimizer state, step, RNG states (the
    data position), history, configs and the tokenizer. Written to a temporary file first, then renamed over
    ``path``, so an interrupted save never leaves a half-written checkpoint."""
    path = Path(path)
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": json.dumps(dataclasses.asdict(trainer.model.config)),
        "train_config": json.dumps(dataclasses.asdict(trainer.cfg)),
        "meta": json.dumps({"step": trainer.step, "chars": trainer.corpus.tokenizer.chars,
                            "n_train": len(trainer.corpus.train), "n_val": len(trainer.corpus.val),
                            "history": dataclasses.asdict(trainer.history)}),
        "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "data_rng": trainer.data_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpoint(NamedTuple):
    """A checkpoint whose every entry was checked: the raw state and its parsed parts."""

    state: dict[str, Any]
    model_config: ModelConfig
    train_config: TrainConfig
    meta: dict[str, Any]
    history: History
    model: TinyDeepSeek  # with the checkpoint's weights and biases loaded


def _entry_error(path: Path, entry: str, reason: str) -> CheckpointError:
    reason = " ".join(str(reason).split())[:300]  # one line
    return CheckpointError(f"{path}: the entry {entry!r} is damaged: {reason}")


def _json_dict(path: Path, state: dict[str, Any], entry: str) -> dict[str, Any]:
    try:
        value = json.loads(state[entry])
    except (TypeError, ValueError) as error:  # not a string, or malformed JSON
        raise _entry_error(path, entry, f"not a JSON text ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise _entry_error(path, entry, f"expected a JSON object, got {type(value).__name__}")
    return value


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint and check every entry (see ``read_checkpoint``); the parsed parts and a model with its
    weights. Raises CheckpointError naming the file and the damaged entry."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError ... depending on the damage
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is truncated, corrupt, not written by torch.save, or holds "
            f"objects other than tensors and plain values ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint of this course's tiny model "
                              f"(expected a dict with format={CHECKPOINT_FORMAT!r}; was it written by Trainer.save?)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}, this code reads version "
                              f"{CHECKPOINT_VERSION}")
    missing = {"model_config", "train_config", "meta", "model", "optimizer", "data_rng", "torch_rng",
               "cuda_rng"} - set(state)
    if missing:
        raise CheckpointError(f"{path} lacks the entries {sorted(missing)}: it is incomplete")

    try:
        config = ModelConfig.from_dict(_json_dict(path, state, "model_config"))
    except (TypeError, ValueError) as error:
        raise error if isinstance(error, CheckpointError) else _entry_error(path, "model_config", error) from None
    try:
        train_config = TrainConfig(**_json_dict(path, state, "train_config"))
    except (TypeError, ValueError) as error:
        raise error if isinstance(error, CheckpointError) else _entry_error(path, "train_config", error) from None

    meta = _json_dict(path, state, "meta")
    if set(meta) != {"step", "chars", "n_train", "n_val", "history"}:
        raise _entry_error(path, "meta", f"expected the fields step, chars, n_train, n_val, history, got "
                                         f"{sorted(meta)}")
    for name in ("step", "n_train", "n_val"):
        try:
            check_int(name, meta[name], 0)
        except (TypeError, ValueError) as error:
            raise _entry_error(path, "meta", str(error)) from None
    try:
        tokenizer = CharTokenizer(meta["chars"])
    except ValueError as error:
        raise _entry_error(path, "meta", f"chars (the tokenizer's alphabet): {error}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise _entry_error(path, "meta", f"the tokenizer has {tokenizer.vocab_size} characters, the model's "
                                         f"vocab_size is {config.vocab_size}")
    try:
        history = History.from_dict(meta["history"])
    except ValueError as error:
        raise _entry_error(path, "meta", f"history: {error}") from None
    if len(history.step) != meta["step"]:
        raise _entry_error(path, "meta", f"history has {len(history.step)} steps, the checkpoint says {meta['step']}")

    with torch.random.fork_rng(devices=[]):  # reading a checkpoint leaves the global random state alone
        model = TinyDeepSeek(config)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise _entry_error(path, "model", "expected a dict of tensors (a state_dict)")
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) + sorted(
        k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if wrong:
        raise _entry_error(path, "model", f"the weights do not fit its own model config (first mismatches: "
                                          f"{wrong[:5]})")
    bad = [k for k, v in weights.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
    if bad:
        raise _entry_error(path, "model", f"tensors that are not finite floating-point numbers: {bad[:5]}")
    model.load_state_dict(weights)

    try:  # the optimizer state must fit this model's parameters: load it into a scratch optimizer
        scratch = make_optimizer(model, train_config)
        settings = set(scratch.param_groups[0])
        scratch.load_state_dict(copy.deepcopy(state["optimizer"]))
        for group in scratch.param_groups:
            if set(group) != settings:
                raise ValueError(f"param_groups hold the settings {sorted(group)}, expected {sorted(settings)}")
            for param in group["params"]:
                param_state = scratch.state.get(param, {})
                if param_state and set(param_state) != {"step", "exp_avg", "exp_avg_sq"}:
                    raise ValueError(f"a parameter's state holds {sorted(param_state)}, expected step, exp_avg, "
                                     f"exp_avg_sq")
                for key in ("exp_avg", "exp_avg_sq"):
                    value = param_state.get(key, param)
                    if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                        raise ValueError(f"{key} of a parameter {list(param.shape)} is "
                                         f"{list(value.shape) if isinstance(value, torch.Tensor) else value!r}")
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise _entry_error(path, "optimizer", f"{type(error).__name__}: {error}") from None

    for entry in ("data_rng", "torch_rng"):
        try:
            torch.Generator().set_state(state[entry])
        except (TypeError, RuntimeError) as error:
            raise _entry_error(path, entry, f"not a CPU generator state ({type(error).__name__}: {error})") from None
    if not isinstance(state["cuda_rng"], list) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in state["cuda_rng"]):
        raise _entry_error(path, "cuda_rng", "expected a list of uint8 tensors (CUDA generator states)")
    return Checkpoint(state, config, train_config, meta, history, model)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint written by ``Trainer.save`` (tensors and plain values only:
    ``torch.load(weights_only=True)`` refuses anything else). Every entry is checked (the configs, the metadata
    with the tokenizer and the history, the weights, the optimizer and RNG states). Returns the checkpoint's
    dict. Raises CheckpointError with a one-line reason naming the file and the damaged entry."""
    return open_checkpoint(path).state


def check_same_config(expected: ModelConfig, found: ModelConfig, path: str | Path = "the checkpoint") -> None:
    """Raise CheckpointError listing every field where ``found`` (a checkpoint's config) differs from ``expected``."""
    if not isinstance(expected, ModelConfig) or not isinstance(found, ModelConfig):
        raise TypeError(f"check_same_config compares two ModelConfig, got {type(expected).__name__} and "
                        f"{type(found).__name__}")
    a, b = dataclasses.asdict(expected), dataclasses.asdict(found)
    differences = [f"{k}: checkpoint {b[k]!r}, expected {a[k]!r}" for k in a if a[k] != b[k]]
    if differences:
        raise CheckpointError(f"{path} was saved from another model configuration: " + "; ".join(differences))


def check_same_data(meta: dict[str, Any], corpus: Corpus, path: str | Path = "the checkpoint") -> None:
    """Raise CheckpointError unless ``corpus`` has the alphabet and the split sizes of the data a checkpoint (its
    ``meta``) was trained on."""
    if meta["chars"] != corpus.tokenizer.chars or (meta["n_train"], meta["n_val"]) != (len(corpus.train),
                                                                                       len(corpus.val)):
        raise CheckpointError(f"{path} was trained on other data ({meta['n_train']} training tokens, "
                              f"{len(meta['chars'])} characters) than the corpus given ({len(corpus.train)}, "
                              f"{corpus.tokenizer.vocab_size}): resume it with the same corpus")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TinyDeepSeek, CharTokenizer]:
    """The trained model (in eval mode) and its tokenizer from a checkpoint, for generation. Raises
    CheckpointError for a damaged file."""
    ckpt = open_checkpoint(path)
    return ckpt.model.to(get_device(device)).eval(), CharTokenizer(ckpt.meta["chars"])
