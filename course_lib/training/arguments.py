"""The checks at the training boundaries: one validator per boundary, named after it, taking the boundary's
parameters by name (``core.validation.boundary``), raising TypeError for a wrong type and ValueError for a wrong
value. The command line's (``cli``) and a checkpoint's (``checkpoint``) checks live with them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from course_lib.core.validation import check_int, check_number
from course_lib.model import arguments as model_arguments
from course_lib.moe.balance import BALANCE_MODES

if TYPE_CHECKING:
    from course_lib.training.config import TrainConfig

DTYPES = ("float32", "bfloat16")  # TrainConfig.dtype: float32, or bfloat16 autocast


def train_config(config: TrainConfig) -> None:
    """``TrainConfig``: a balancing mode and a dtype of the lists; steps, batch_size, seq_len, micro_batches,
    eval_interval, eval_tokens ints >= 1; every other number finite and >= 0."""
    if config.balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {config.balance!r}")
    autocast(None, config.dtype)
    positive = ("steps", "batch_size", "seq_len", "micro_batches", "eval_interval", "eval_tokens")
    for f in dataclasses.fields(config):  # every other number (lr, ..., warmup_steps, seed) is >= 0
        value = getattr(config, f.name)
        if f.type in ("int", int):
            check_int(f.name, value, 1 if f.name in positive else 0)
        if f.type in ("float", float):
            check_number(f.name, value, 0)


def autocast(device: Any, dtype: Any) -> None:
    """``step.autocast``: a dtype of ``DTYPES``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (bfloat16 = autocast), got {dtype!r}")


def train_step(model: Any, optimizer: Any, micro_batches: Any, balance_mode: Any, gamma: Any, alpha: Any,
               seq_alpha: Any, mtp_lambda: Any, grad_clip: Any, dtype: Any) -> None:
    """``step.train_step``: the settings, and a non-empty list of windows [batch, T + 1] in the model's vocabulary
    (each read back once: the forward passes inside the step read none)."""
    if balance_mode not in BALANCE_MODES:
        raise ValueError(f"balance_mode must be one of {BALANCE_MODES}, got {balance_mode!r}")
    for name, value in (("gamma", gamma), ("alpha", alpha), ("seq_alpha", seq_alpha), ("mtp_lambda", mtp_lambda),
                        ("grad_clip", grad_clip)):
        check_number(name, value, 0)
    autocast(None, dtype)
    if isinstance(micro_batches, torch.Tensor) or not micro_batches:
        raise ValueError("micro_batches must be a non-empty list of int64 tensors [batch, T + 1]: one optimizer step "
                         "needs at least one batch of tokens")
    for tokens in micro_batches:
        model_arguments.check_tokens(model, tokens, windows=True)


def step_rollback(self: Any, model: Any, optimizer: Any) -> None:
    """``step.StepRollback(model, optimizer)``: a module and an optimizer."""
    if not isinstance(model, torch.nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"StepRollback(model, optimizer) takes a torch.nn.Module and a torch.optim.Optimizer, got "
                        f"{type(model).__name__} and {type(optimizer).__name__}")


def history_from_dict(values: Any) -> None:
    """``History.from_dict``: a dict with exactly History's fields, each a list of numbers (``loads`` a list of
    steps of layers of experts), the per-step columns of one length and the per-validation columns of another.
    Called at the top of ``from_dict`` (an alternative constructor: it reads a checkpoint, so it is checked even
    when called from inside another boundary)."""
    from course_lib.training.config import History

    names = [f.name for f in dataclasses.fields(History)]
    if not isinstance(values, dict) or set(values) != set(names):
        got = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ValueError(f"expected a dict with the fields {names}, got {got}")
    for name in names:
        column = values[name]
        if not isinstance(column, list):
            raise ValueError(f"{name} must be a list, got {type(column).__name__}")
        if name == "loads" and not all(isinstance(row, list) and all(isinstance(r, list) for r in row)
                                       for row in column):
            raise ValueError("loads must be a list (steps) of lists (layers) of lists (experts)")
        flat = [x for row in column for layer in row for x in layer] if name == "loads" else column
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
            raise ValueError(f"{name} must hold numbers only")
    for group in (names[:9], names[9:]):  # per-step columns, per-validation columns
        lengths = {len(values[name]) for name in group}
        if len(lengths) > 1:
            raise ValueError(f"the columns {group} have different lengths {sorted(lengths)}")


def lr_at(step: Any, cfg: Any) -> None:
    """``config.lr_at``: a 0-based optimizer step."""
    check_int("step", step, 0)


def make_optimizer(model: Any, cfg: Any) -> None:
    """``config.make_optimizer``: a module and a TrainConfig."""
    from course_lib.training.config import TrainConfig

    if not isinstance(model, torch.nn.Module) or not isinstance(cfg, TrainConfig):
        raise TypeError(f"make_optimizer(model: nn.Module, cfg: TrainConfig), got {type(model).__name__}, "
                        f"{type(cfg).__name__}")


def mean_maxvio(loads: Any) -> None:
    """``loop.mean_maxvio``: loads [n_layers, n_experts]."""
    if not isinstance(loads, torch.Tensor) or loads.dim() != 2:
        raise ValueError(f"loads must be a 2-D tensor [n_layers, n_experts], got {loads!r:.80}")


def trainer(self: Any, model: Any, corpus: Any, cfg: Any, device: Any) -> None:
    """``loop.Trainer(model, corpus, cfg, device)``: a TinyDeepSeek, a Corpus of its vocabulary, a TrainConfig
    whose seq_len fits the model and the corpus's splits."""
    from course_lib.model.tiny import TinyDeepSeek
    from course_lib.training.config import TrainConfig
    from course_lib.training.data import Corpus

    if not isinstance(model, TinyDeepSeek) or not isinstance(corpus, Corpus) or not isinstance(cfg, TrainConfig):
        raise TypeError(f"Trainer(model: TinyDeepSeek, corpus: Corpus, cfg: TrainConfig), got "
                        f"{type(model).__name__}, {type(corpus).__name__}, {type(cfg).__name__}")
    if corpus.tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the corpus has {corpus.tokenizer.vocab_size} tokens, the model's vocab_size is "
                         f"{model.config.vocab_size}")
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    # the splits hold a window of seq_len + 1 tokens: the batches drawn inside ``train`` and ``evaluate`` are not
    # checked again (``Corpus.get_batch`` and ``eval_batches`` are boundaries of their own)
    get_batch(corpus, "train", cfg.batch_size, cfg.seq_len, None)
    eval_batches(corpus, cfg.batch_size, cfg.seq_len, None, "val")


def train(self: Any, steps: Any, progress: Any) -> None:
    """``Trainer.train``: steps None or an int >= 0 (0: nothing to do, a notebook's steps // 4 on a tiny run)."""
    if steps is not None:
        check_int("steps", steps, 0)


def evaluate(self: Any, max_tokens: Any) -> None:
    """``Trainer.evaluate``: max_tokens None or an int >= 1."""
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, 1)


def summary(self: Any, last_steps: Any) -> None:
    """``Trainer.summary``: last_steps an int >= 1, and at least one step trained."""
    check_int("last_steps", last_steps, 1)
    if not self.history.step:
        raise ValueError("nothing to summarise: train at least one step first")


# ------------------------------------------------------------------------------------------ the data
def to_ascii(text: Any) -> None:
    """``data.to_ascii``: a str."""
    if not isinstance(text, str):
        raise TypeError(f"to_ascii expects a str, got {type(text).__name__}")


def char_tokenizer(chars: Any) -> None:
    """``CharTokenizer(chars)``: a non-empty string without repeated characters."""
    if not isinstance(chars, str) or not chars:
        raise ValueError(f"chars must be a non-empty string, got {chars!r:.60}")
    if len(set(chars)) != len(chars):
        raise ValueError("chars must not repeat a character: each one is exactly one token")


def encode(self: Any, text: Any) -> None:
    """``CharTokenizer.encode``: a str of the tokenizer's characters (the first other one is named)."""
    if not isinstance(text, str):
        raise TypeError(f"encode expects a str, got {type(text).__name__}")
    unknown = set(text).difference(self.chars)
    if unknown:
        first = next(c for c in text if c in unknown)
        raise ValueError(f"character {first!r} is not in the tokenizer's alphabet; map the text with data.to_ascii "
                         f"first")


def decode(self: Any, ids: Any) -> None:
    """``CharTokenizer.decode``: an integer tensor or a sequence of int, each in [0, vocab_size)."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    if not isinstance(values, Sequence) or not all(isinstance(i, int) and not isinstance(i, bool) for i in values):
        shown = values[:5] if isinstance(values, Sequence) else type(values).__name__
        raise TypeError(f"token ids must be ints (an integer tensor or a list of int), got {shown!r}")
    bad = [i for i in values if not 0 <= i < len(self.chars)]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {len(self.chars) - 1}]")


def corpus(corpus: Any) -> None:
    """``Corpus``: a CharTokenizer, train and val non-empty 1-D int64 ids in its vocabulary (read back once),
    domain labels None or int64 of the ids' shape."""
    from course_lib.training.data import CharTokenizer

    if not isinstance(corpus.tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be a CharTokenizer, got {type(corpus.tokenizer).__name__}")
    vocab_size = corpus.tokenizer.vocab_size
    for name in ("train", "val"):
        ids = getattr(corpus, name)
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int64 tensor of token ids, got {ids!r:.80}")
        if ids.numel() == 0:
            raise ValueError(f"the {name} split is empty: it needs token ids")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"{name} token ids must lie in [0, {vocab_size}) (the tokenizer's vocabulary), got ids "
                             f"from {int(ids.min())} to {int(ids.max())}")
        domains = getattr(corpus, f"{name}_domains")
        if domains is not None and (not isinstance(domains, torch.Tensor) or domains.shape != ids.shape
                                    or domains.dtype != torch.int64):
            raise ValueError(f"{name}_domains must be an int64 tensor of the shape of {name} {list(ids.shape)}, got "
                             f"{domains!r:.80}")


def check_split(corpus: Any, name: Any) -> torch.Tensor:
    """The ids of split ``name`` of ``corpus``; ValueError unless it is "train", "val", or "val_shifted" when the
    corpus has one."""
    if name in ("train", "val") or (name == "val_shifted" and corpus.val_shifted is not None):
        return getattr(corpus, name)
    expected = "'train', 'val' or 'val_shifted'" if corpus.val_shifted is not None else "'train' or 'val'"
    raise ValueError(f"split must be {expected}, got {name!r}")


def split(self: Any, name: Any) -> None:
    """``Corpus.split``: "train", "val", or "val_shifted" when the corpus has one."""
    check_split(self, name)


def get_batch_with_domains(self: Any, split: Any, batch_size: Any, seq_len: Any, generator: Any) -> None:
    """``Corpus.get_batch_with_domains``: a split of the corpus, batch_size and seq_len ints >= 1, and a split
    long enough for windows of seq_len + 1 tokens."""
    ids = check_split(self, split)
    check_int("batch_size", batch_size)
    check_int("seq_len", seq_len)
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    if len(ids) < seq_len + 2:
        raise ValueError(f"the {split} split has {len(ids)} tokens: too few for windows of {seq_len + 1}")


def get_batch(self: Any, split: Any, batch_size: Any, seq_len: Any, generator: Any) -> None:
    """``Corpus.get_batch``: as ``get_batch_with_domains``."""
    get_batch_with_domains(self, split, batch_size, seq_len, generator)


def eval_batches(self: Any, batch_size: Any, seq_len: Any, max_tokens: Any, split: Any) -> None:
    """``Corpus.eval_batches``: batch_size, seq_len and max_tokens (or None) ints >= 1, a split of the corpus long
    enough for one window of seq_len + 1 tokens."""
    check_int("batch_size", batch_size, 1)
    check_int("seq_len", seq_len, 1)
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, 1)
    ids = check_split(self, split)
    if len(ids) - 1 < seq_len:
        raise ValueError(f"the {split} split has {len(ids)} tokens: too few for one window of {seq_len + 1}")


def python_docs(val_fraction: Any, tokenizer: Any, shifted_fraction: Any, block_chars: Any) -> None:
    """``data.python_docs``: fractions strictly between 0 and 1, block_chars >= 1."""
    for name, fraction in (("val_fraction", val_fraction), ("shifted_fraction", shifted_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {fraction}")
    if block_chars < 1:
        raise ValueError(f"block_chars must be >= 1, got {block_chars}")


def synthetic_lines(n_lines: Any, seed: Any) -> None:
    """``data.synthetic_lines``: n_lines an int >= 1."""
    check_int("n_lines", n_lines)
    if n_lines < 1:
        raise ValueError(f"n_lines must be >= 1, got {n_lines}")


def synthetic_task(n_lines: Any, seed: Any, val_fraction: Any, tokenizer: Any) -> None:
    """``data.synthetic_task``: n_lines an int >= 2 (one line for each split at least), val_fraction in (0, 1)."""
    check_int("n_lines", n_lines, 2)
    check_number("val_fraction", val_fraction, 0, strict=True)
    if not val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")


def sparsify(model: Any, index_n_heads: Any, index_head_dim: Any, index_topk: Any) -> None:
    """``sparse_attention.sparsify``: a TinyDeepSeek with MLA (query latent included), and indexer sizes that fit
    it."""
    from course_lib.attention import arguments as attention_arguments
    from course_lib.model.tiny import TinyDeepSeek

    if not isinstance(model, TinyDeepSeek) or model.config.attention != "mla":
        got = model.config.attention if isinstance(model, TinyDeepSeek) else type(model).__name__
        raise TypeError(f"sparsify adds DeepSeek Sparse Attention's indexer to MLA: it needs a TinyDeepSeek with "
                        f"attention='mla', got {got}")
    c = model.config
    attention_arguments.lightning_indexer(c.dim, c.q_lora_rank, index_n_heads, index_head_dim, c.qk_rope_head_dim)
    attention_arguments.check_index_topk(index_topk)


def check_dsa_model(model: Any) -> None:
    """Raise TypeError unless ``model`` is a TinyDeepSeek with DeepSeek Sparse Attention layers (``sparsify``)."""
    from course_lib.model.tiny import TinyDeepSeek
    from course_lib.training.sparse_attention import dsa_layers

    if not isinstance(model, TinyDeepSeek) or not dsa_layers(model):
        raise TypeError(f"expected a TinyDeepSeek whose MLA layers have indexers (sparse_attention.sparsify), got "
                        f"{type(model).__name__}")


def set_attention(model: Any, mode: Any, index_topk: Any, track: Any) -> None:
    from course_lib.attention import arguments as attention_arguments
    from course_lib.attention.dsa import MODES
    from course_lib.training.sparse_attention import dsa_layers

    if not isinstance(model, torch.nn.Module) or not dsa_layers(model):
        raise TypeError(f"set_attention needs a model with DeepSeek Sparse Attention layers (sparsify), got "
                        f"{type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if index_topk is not None:
        attention_arguments.check_index_topk(index_topk)


def _optimizer(name: str, optimizer: Any) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(optimizer).__name__}")


def indexer_warmup_step(model: Any, optimizer: Any, tokens: Any) -> None:
    check_dsa_model(model)
    _optimizer("optimizer", optimizer)
    model_arguments.check_tokens(model, tokens, windows=True)


def sparse_training_step(model: Any, optimizer: Any, indexer_optimizer: Any, tokens: Any, gamma: Any,
                         grad_clip: Any) -> None:
    check_dsa_model(model)
    _optimizer("optimizer", optimizer)
    _optimizer("indexer_optimizer", indexer_optimizer)
    if optimizer is indexer_optimizer:
        raise ValueError("sparse training steps the model and the indexers apart: give two optimizers, over "
                         "model_parameters(model) and indexer_parameters(model)")
    check_number("gamma", gamma, 0)
    check_number("grad_clip", grad_clip, 0)
    model_arguments.check_tokens(model, tokens, windows=True)


def attention_recall(model: Any, tokens: Any, index_topk: Any) -> None:
    from course_lib.attention import arguments as attention_arguments

    check_dsa_model(model)
    model_arguments.check_tokens(model, tokens)
    attention_arguments.check_index_topk(index_topk)
    if index_topk >= tokens.shape[1]:
        raise ValueError(f"attention_recall measures queries with more than index_topk={index_topk} tokens to choose "
                         f"from: give tokens longer than that, got T={tokens.shape[1]}")
