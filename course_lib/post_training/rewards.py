"""A verifiable task and its rule-based reward, as R1-Zero's accuracy and format rewards are rules, not a model ([R1]).

The task: sort the letters of a word. The tiny model meets it in pre-training (``training.data.synthetic_task``
writes lines such as ``srt cab=abc``) and, after a short pre-training, gets some words right and others not: a
policy that sometimes succeeds, which is what group-relative RL needs (a group whose outputs all get the same
reward has advantages 0 and teaches nothing).

- ``sorting_examples``: prompts ``"\\nsrt <word>="`` (all of one length, so that groups decode in one batch) and
  their answers, for words that can be kept apart from other sets (held-out prompts).
- ``sorting_reward``: 1 when the completion is the sorted word followed by the end of the line (accuracy and
  format in one rule), else 0.
- ``group_rewards``: the rewards of a ``sampling.Rollout``'s completions, [n_prompts, G].
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

import torch

from course_lib.core.validation import boundary
from course_lib.post_training import arguments
from course_lib.post_training.sampling import Rollout
from course_lib.training.data import CharTokenizer

LETTERS = "abcdefghijklmnopqrstuvwxyz"
STOP = "\n"  # a completion ends with the end of its line


@boundary(arguments.sorting_examples)
def sorting_examples(n: int, word_len: int = 5, seed: int = 0,
                     exclude: Collection[str] = ()) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, answer) pairs: prompt ``"\\nsrt <word>="`` for a random word of ``word_len`` letters
    not in ``exclude``, answer the word's letters sorted. Raises TypeError / ValueError for n, word_len not ints
    >= 1, or more words asked than exist."""
    rng, words = random.Random(seed), set()
    while len(words) < n:
        word = "".join(rng.choice(LETTERS) for _ in range(word_len))
        if word not in exclude:
            words.add(word)
    return [(f"\nsrt {word}=", "".join(sorted(word))) for word in sorted(words)]


def sorting_reward(completion: str, answer: str) -> float:
    """1.0 when ``completion`` is ``answer`` followed by the end of the line, else 0.0 (a rule, checkable by anyone)."""
    return float(completion == answer + STOP)


@boundary(arguments.group_rewards)
def group_rewards(rollout: Rollout, answers: Sequence[str], tokenizer: CharTokenizer) -> torch.Tensor:
    """float32 [n_prompts, G]: ``sorting_reward`` of each completion (its masked tokens, decoded) against its
    prompt's answer (rows p * G .. p * G + G - 1 answer ``answers[p]``). Raises TypeError / ValueError for answers
    that are not one string per prompt."""
    rewards = [sorting_reward(tokenizer.decode(row[keep]), answers[i // rollout.group_size])
               for i, (row, keep) in enumerate(zip(rollout.completion, rollout.mask))]
    return torch.tensor(rewards, dtype=torch.float32).view(-1, rollout.group_size)
