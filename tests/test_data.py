"""The tiny model's data: the tokenizer round-trips, the splits are fixed (validation from the training text's
distribution, a shifted second held-out set), batches are seeded windows, the synthetic task labels every character
with its domain."""

import pytest
import torch

from course_lib.training import data


def test_tokenizer_round_trip_and_fixed_alphabet():
    tok = data.CharTokenizer()
    assert tok.vocab_size == 96 and tok.chars[0] == "\n" and tok.chars[1] == " "
    text = 'def f(x):\n    return x ** 2  # "squared" ~ 100%'
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert tok.decode(ids) == text and tok.decode(ids.tolist()) == text


def test_tokenizer_errors_name_the_problem():
    tok = data.CharTokenizer()
    with pytest.raises(ValueError, match="'é' is not in the tokenizer's alphabet"):
        tok.encode("café")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 96])
    with pytest.raises(ValueError, match="repeat"):
        data.CharTokenizer("abca")


def test_to_ascii_maps_typography():
    assert data.to_ascii("“quoted” – it’s…\tx") == "\"quoted\" - it's...    x"
    assert data.to_ascii("日") == "?"


def test_python_docs_split_is_fixed_and_disjoint():
    a, b = data.python_docs(), data.python_docs()
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and torch.equal(a.val_shifted, b.val_shifted)
    assert len(a.train) > 300_000 and 20_000 < len(a.val) < len(a.train) / 5
    assert 20_000 < len(a.val_shifted) < len(a.train) / 5
    text = a.tokenizer.decode(a.val[:2000])
    assert "statement" in text or "sequence" in text  # English prose about Python
    train_text = a.tokenizer.decode(a.train)
    for part in (a.val, a.val_shifted):  # no held-out paragraph of some length is in the training text
        paragraphs = [p for p in a.tokenizer.decode(part).split("\n\n") if len(p) > 400]
        assert paragraphs and not any(p in train_text for p in paragraphs)


def _char_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Total variation distance between the character frequencies of two token sequences."""
    freq = [torch.bincount(ids, minlength=96).double() / len(ids) for ids in (x, y)]
    return 0.5 * float((freq[0] - freq[1]).abs().sum())


def test_validation_text_comes_from_the_training_distribution(corpus):
    """Validation blocks are spread through the training topics, so their characters are distributed like the
    training text's; the shifted set (the last topics by name) is measurably unlike it (more code)."""
    same, shifted = _char_distance(corpus.val, corpus.train), _char_distance(corpus.val_shifted, corpus.train)
    assert same < 0.06 and shifted > 3 * same


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1"):
        data.python_docs(val_fraction=0)
    with pytest.raises(ValueError, match="shifted_fraction must lie strictly between 0 and 1"):
        data.python_docs(shifted_fraction=1.5)
    with pytest.raises(ValueError, match="no validation or no training block"):
        data.python_docs(val_fraction=0.001, block_chars=10**6)


def test_eval_batches_of_the_shifted_split(corpus):
    windows = torch.cat(list(corpus.eval_batches(8, 64, split="val_shifted")))
    assert torch.equal(windows[0], corpus.val_shifted[:65])
    assert windows.shape[0] == (len(corpus.val_shifted) - 1) // 64
    with pytest.raises(ValueError, match="'train', 'val' or 'val_shifted'"):
        corpus.split("test")
    assert "shifted" in repr(corpus) and "shifted" not in repr(data.synthetic_task(200))
    synthetic = data.synthetic_task(200)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        synthetic.split("val_shifted")


def test_batches_are_seeded_windows_of_consecutive_tokens(corpus):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batch = corpus.get_batch("train", 4, 32, g1)
    assert batch.shape == (4, 33) and batch.dtype == torch.long
    assert torch.equal(batch, corpus.get_batch("train", 4, 32, g2))
    assert not torch.equal(batch, corpus.get_batch("train", 4, 32, g1))  # the generator moved on
    text = corpus.tokenizer.decode(corpus.train)
    for row in batch:  # every row is a consecutive slice of the training text
        assert corpus.tokenizer.decode(row) in text


def test_eval_batches_cover_the_validation_split_in_order(corpus):
    windows = torch.cat(list(corpus.eval_batches(8, 64)))
    assert windows.shape[1] == 65
    assert torch.equal(windows[0], corpus.val[:65]) and torch.equal(windows[1, 0], corpus.val[64])
    assert windows.shape[0] == (len(corpus.val) - 1) // 64
    assert torch.cat(list(corpus.eval_batches(8, 64, max_tokens=640))).shape == (10, 65)


def test_bad_batch_requests(corpus):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'val_shifted', got 'test'"):
        corpus.get_batch("test", 2, 8, g)
    with pytest.raises(ValueError, match="too few"):
        corpus.get_batch("val", 2, len(corpus.val), g)
    with pytest.raises(ValueError, match=">= 1"):
        corpus.get_batch("train", 0, 8, g)


def test_synthetic_lines_are_correct_examples():
    lines, domains = data.synthetic_lines(400, seed=1)
    names = list(data.SYNTHETIC_DOMAINS)
    assert set(domains) == set(range(len(names)))
    for line, d in zip(lines, domains):
        tag, body = line.split(" ", 1)
        question, answer = body.split("=")
        if names[d] == "addition":
            assert tag == "add" and eval(question) == int(answer)  # noqa: S307 - digits and '+' only
        elif names[d] == "reversal":
            assert tag == "rev" and answer == question[::-1]
        elif names[d] == "sorting":
            assert tag == "srt" and answer == "".join(sorted(question))
        else:
            assert tag == "rep" and answer == question * 3


def test_synthetic_task_labels_every_character_with_its_line_domain():
    corpus = data.synthetic_task(300, seed=2)
    lines, domains = data.synthetic_lines(300, seed=2)
    assert corpus.train.shape == corpus.train_domains.shape and corpus.val.shape == corpus.val_domains.shape
    assert corpus.domain_names == tuple(data.SYNTHETIC_DOMAINS)
    text = corpus.tokenizer.decode(corpus.train)
    assert text.split("\n")[:5] == lines[:5]
    first = len(lines[0]) + 1
    assert set(corpus.train_domains[:first].tolist()) == {domains[0]}
    tokens, labels = corpus.get_batch_with_domains("val", 3, 20, torch.Generator().manual_seed(0))
    assert tokens.shape == labels.shape == (3, 21)
