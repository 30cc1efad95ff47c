"""speculative: greedy output identical to plain greedy decoding (MHA and MLA, D = 1, 2, one-token prompts, up to
the context limit), drafts equal to the uncached MTP chain, the MTP module's cached step, the sampling rule's
distribution (the rule alone on 200K vectorised rows, and the first two tokens of whole runs against the exact
distribution), statistics and bad input."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.model.tiny import TinyDeepSeek
from id_reads import id_reductions  # tests/id_reads.py
from course_lib.inference.speculative import accept_greedy, accept_sampled, plain_generate, speculative_generate
from tiny_models import tiny_config


def tiny_model(mtp_depth=2, attention="mha", vocab=7, max_seq_len=40, seed=0, head_scale=1.0):
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=vocab, max_seq_len=max_seq_len, mtp_depth=mtp_depth, attention=attention)
    model = TinyDeepSeek(config).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(head_scale)  # peakier distributions: more drafts accepted, sharper sampling tests
    return model


def prompt_of(length, vocab, seed):
    return torch.randint(vocab, (length,), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ greedy
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_greedy_identical_to_plain_greedy(attention):
    model = tiny_model(2, attention, seed=2)
    limit = model.config.max_seq_len
    total_accepted = 0
    for length, seed in itertools.product([1, 5, 13], range(2)):
        prompt = prompt_of(length, 7, seed)
        for new in (1, 3, limit - length):  # up to the context limit
            expected, plain = plain_generate(model, prompt, new)
            assert plain.forwards == new
            for depth in (1, 2):
                got, stats = speculative_generate(model, prompt, new, depth=depth)
                assert torch.equal(got, expected), (length, seed, new, depth)
                assert stats.new_tokens == new and 1 <= stats.forwards <= new
                previous_accepted = True
                for position, k, draft, accepted in stats.records:  # accepted iff it and those before it match
                    previous_accepted = previous_accepted or k == 1
                    assert 1 <= k <= depth
                    assert accepted == (previous_accepted and draft == int(expected[position]))
                    previous_accepted = accepted
                total_accepted += sum(stats.accepted)
    assert total_accepted > 20  # the tests exercised accepted drafts, not only rejections


def test_greedy_equals_model_generate_top1():
    model = tiny_model(1, seed=2)
    prompt = prompt_of(3, 7, 1)
    reference = model.generate(prompt, 30, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(speculative_generate(model, prompt, 30)[0], reference)


def slow_draft(model, committed, drafts_before, k):
    """Depth k's greedy draft with the uncached chain: the main model and depths 1..k over the whole text
    x_0..x_{n-1}, d_1..d_{k-1}; depth k's last position n - 2 predicts x_{n+k-1}."""
    inputs = torch.tensor([committed + drafts_before])  # [1, n + k - 1]
    h = model.hidden_states(inputs)
    for module in model.mtp_modules[:k]:
        h, logits = module(h, inputs)
    assert logits.shape[1] == len(committed) - 1
    return int(logits[0, -1].argmax())


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_drafts_equal_the_uncached_mtp_chain(attention):
    model = tiny_model(2, attention, seed=2)
    for length in (1, 4):
        tokens, stats = speculative_generate(model, prompt_of(length, 7, length), 25)
        by_step = {}
        for position, k, draft, _ in stats.records:
            by_step.setdefault(position - k + 1, []).append(draft)  # key: n, the depth-1 draft's position
        with torch.no_grad():
            for n, drafts in by_step.items():
                for k in range(1, len(drafts) + 1):
                    assert drafts[k - 1] == slow_draft(model, tokens[:n].tolist(), drafts[:k - 1], k), (n, k)


@pytest.mark.parametrize("attention, length", [("mha", 5), ("mla", 2)])
def test_three_depths_draft_as_the_uncached_chain(attention, length):
    """D = 3 over the whole context: every draft of depths 2 and 3 equals the uncached chain's, so depth k reads
    h^{k-1} of the right positions from its own cache and the committed states it had not read. Failed before: the
    state depth k had not read was overwritten by depth k - 1's new one before depth k read it (one wrong draft
    in each of these runs)."""
    model = tiny_model(3, attention, seed=2, head_scale=4.0)
    tokens, stats = speculative_generate(model, prompt_of(length, 7, 2), 40 - length, depth=3)
    by_step = {}
    for position, k, draft, _ in stats.records:
        by_step.setdefault(position - k + 1, []).append(draft)
    with torch.no_grad():
        wrong = [(n, k) for n, drafts in by_step.items() for k in range(1, len(drafts) + 1)
                 if drafts[k - 1] != slow_draft(model, tokens[:n].tolist(), drafts[:k - 1], k)]
    assert not wrong and max(len(drafts) for drafts in by_step.values()) == 3


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_mtp_module_with_a_cache_equals_the_whole_sequence(attention):
    """MTPModule.forward over positions in chunks with a KV cache (h^{k-1} from position s, tokens t_{s+1}..,
    k more than the positions) = MTPModule.forward over the whole sequence at once."""
    model = tiny_model(2, attention, seed=1)
    tokens = prompt_of(12, 7, 0)[None]
    with torch.no_grad():
        h0 = model.hidden_states(tokens)
        h, cache = h0, model.new_cache(1)
        for k, module in enumerate(model.mtp_modules, start=1):
            expected_h, expected_logits = module(h, tokens)  # [1, T - k, dim]
            pieces, logits = [], []
            for lo, hi in ((0, 1), (1, 5), (5, 12 - k)):
                out, lg = module(h[:, lo:hi], tokens[:, lo:hi + k], cache.mtp[k - 1])
                pieces.append(out)
                logits.append(lg)
            torch.testing.assert_close(torch.cat(pieces, 1), expected_h, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(torch.cat(logits, 1), expected_logits, rtol=1e-10, atol=1e-10)
            h = expected_h
        with pytest.raises(ValueError, match="h_prev needs at least T - k positions"):
            model.mtp_modules[0](h0[:, :1], tokens[:, :3], model.new_cache(1).mtp[0])


# ------------------------------------------------------------------------------------------ accept rules
@pytest.mark.parametrize("drafts, main, emitted", [
    ([], [4], [4]),
    ([1], [1, 5], [1, 5]),  # full accept: the main model's own token follows
    ([1], [2, 5], [2]),
    ([1, 2], [1, 2, 3], [1, 2, 3]),
    ([1, 2], [1, 0, 3], [1, 0]),
    ([1, 2], [0, 2, 3], [0]),  # a later match after a mismatch is not accepted
])
def test_accept_greedy(drafts, main, emitted):
    got = accept_greedy(torch.tensor(drafts, dtype=torch.int64), torch.tensor(main))
    assert got.tolist() == emitted
    with pytest.raises(ValueError, match=r"main_tokens \[d \+ 1\]"):
        accept_greedy(torch.tensor(drafts, dtype=torch.int64), torch.tensor(main + [0]))


def test_accept_sampled_preserves_the_distribution():
    """200K rows with the same p and q: the first emitted token is distributed as p_0, and after an accepted first
    draft the next as p_1. Total variation below 0.01 (its expected value here is about 0.003)."""
    g = torch.Generator().manual_seed(0)
    V, B = 5, 200_000
    p = F.softmax(3 * torch.randn(2, V, generator=g, dtype=torch.float64), -1)
    q = F.softmax(3 * torch.randn(1, V, generator=g, dtype=torch.float64), -1)
    drafts = torch.multinomial(q[0], B, replacement=True, generator=g)[:, None]  # [B, 1] from q
    m, token = accept_sampled(drafts, q.expand(B, 1, V), p.expand(B, 2, V), g)
    first = torch.where(m == 1, drafts[:, 0], token)
    tv = 0.5 * (torch.bincount(first, minlength=V) / B - p[0]).abs().sum()
    assert tv < 0.01, float(tv)
    second = token[m == 1]
    tv2 = 0.5 * (torch.bincount(second, minlength=V) / len(second) - p[1]).abs().sum()
    assert tv2 < 0.02, float(tv2)
    assert 0 < float(m.double().mean()) < 1  # some accepted, some rejected
    expected_acceptance = torch.minimum(p[0], q[0]).sum()  # P(accept) = sum_x min(p, q)
    assert abs(float(m.double().mean()) - float(expected_acceptance)) < 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_a_draft_the_main_model_cannot_emit_is_never_accepted(dtype, monkeypatch):
    """p(x) = 0 for the draft: rejected even when the uniform draw is exactly 0, whatever q(x) (1, the dtype's
    smallest subnormal, 0) and the dtype of p and q. And p(x) > 0 (the smallest subnormal) with u = 0 is accepted:
    u < p / q. Failed before: u q <= p accepted u = 0, p = 0."""
    monkeypatch.setattr(torch, "rand", lambda *size, generator=None, dtype=None: torch.zeros(*size, dtype=dtype))
    tiny = float(torch.finfo(dtype).smallest_normal) * float(torch.finfo(dtype).eps)  # the smallest subnormal
    assert torch.tensor(tiny, dtype=dtype) > 0
    q_of_draft = [1.0, tiny, 0.0]
    q = torch.tensor([[[qx, 0.5, 0.5]] for qx in q_of_draft], dtype=dtype)  # [3, 1, V]: draft 0
    p = torch.tensor([[[0.0, 0.75, 0.25], [0.2, 0.3, 0.5]]] * 3, dtype=dtype)  # [3, 2, V]: p(draft) = 0
    m, token = accept_sampled(torch.zeros(3, 1, dtype=torch.int64), q, p, torch.Generator().manual_seed(0))
    assert m.tolist() == [0, 0, 0] and all(t in (1, 2) for t in token.tolist())
    p_possible = p.clone()
    p_possible[:, 0, 0] = tiny
    m, _ = accept_sampled(torch.zeros(3, 1, dtype=torch.int64), q, p_possible, torch.Generator().manual_seed(0))
    assert m.tolist() == [1, 1, 1]


TINY_TEMPERATURES = [1e-30, 1e-45, 1e-300, math.ulp(0.0)]  # ulp(0.0): the smallest positive float, 5e-324


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_tiny_temperatures_decode_greedily(attention):
    """Every temperature > 0 is accepted and decodes like greedy near 0: generate, plain_generate and
    speculative_generate give the greedy output (no inf / NaN from logits / T). Failed before: 1e-45 in generate,
    5e-324 in all three."""
    model = tiny_model(2, attention, seed=2)
    prompt = prompt_of(4, 7, 0)
    greedy, _ = plain_generate(model, prompt, 20)
    for temperature in TINY_TEMPERATURES:
        g = torch.Generator().manual_seed(0)
        assert torch.equal(model.generate(prompt, 20, temperature, generator=g), greedy), temperature
        assert torch.equal(plain_generate(model, prompt, 20, temperature, g)[0], greedy), temperature
        for depth in (1, 2):
            got, _ = speculative_generate(model, prompt, 20, depth, temperature, g)
            assert torch.equal(got, greedy), (temperature, depth)


@pytest.mark.parametrize("attention, absorb", [("mha", False), ("mla", False), ("mla", True)])
def test_decoding_under_bfloat16_autocast(attention, absorb):
    """The float32 caches take bfloat16 keys / latents under autocast (failed before: "make the cache after moving
    the model", which does not apply). Greedy decoding under autocast, plain and speculative, emits the float32
    model's argmax up to bfloat16 rounding (not token for token: bfloat16 rounds near-ties differently for another
    batch shape); sampling runs too."""
    model = tiny_model(2, attention, seed=2).float()
    for module in model.modules():
        if hasattr(module, "absorb"):
            module.absorb = absorb
    prompt = prompt_of(4, 7, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [plain_generate(model, prompt, 20)[0]] + [speculative_generate(model, prompt, 20, depth)[0]
                                                            for depth in (1, 2)]
        sampled, _ = speculative_generate(model, prompt, 20, temperature=1.0,
                                          generator=torch.Generator().manual_seed(0))
        generated = model.generate(prompt, 20, 1.0, generator=torch.Generator().manual_seed(0))
    for tokens in outputs:
        with torch.no_grad():
            logits = model(tokens[None])[0, 3:-1]  # float32: the positions that predicted the 20 new tokens
        shortfall = logits.amax(-1) - logits.gather(-1, tokens[4:, None])[:, 0]
        assert float(shortfall.max()) < 0.05, shortfall
    for tokens in outputs + [sampled, generated]:
        assert tokens.shape == (24,) and 0 <= int(tokens.min()) and int(tokens.max()) < 7


def test_sampling_first_two_tokens_have_the_main_models_distribution():
    """Whole runs (300 seeds, vocabulary 3, D = 2): the first two generated tokens against the exact distribution
    p(x1 | prompt) p(x2 | prompt, x1); the second is the depth-1 draft or its resample. Chi-square with 8 degrees
    of freedom below 26.1 (its 0.1% tail). (The rule itself is tested on 200K vectorised rows above.)"""
    model = tiny_model(2, vocab=3, max_seq_len=8, head_scale=20.0, seed=2)
    prompt = torch.tensor([0, 2])
    with torch.no_grad():
        p1 = F.softmax(model(prompt[None])[0, -1], -1)
        exact = torch.stack([p1[a] * F.softmax(model(torch.tensor([[0, 2, a]]))[0, -1], -1) for a in range(3)])
    runs = 300
    counts = torch.zeros(3, 3)
    for seed in range(runs):
        tokens, _ = speculative_generate(model, prompt, 3, temperature=1.0, generator=torch.Generator().manual_seed(seed))
        counts[tokens[2], tokens[3]] += 1
    expected = runs * exact.flatten()
    mask = expected > 0
    chi2 = float(((counts.flatten()[mask] - expected[mask]) ** 2 / expected[mask]).sum())
    assert chi2 < 26.1, (chi2, counts, exact)


def test_sampling_with_depth_two_drafts_accepts_and_stays_in_range():
    model = tiny_model(2, seed=2)
    tokens, stats = speculative_generate(model, prompt_of(3, 7, 0), 30, temperature=1.0,
                                         generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (33,) and int(tokens.min()) >= 0 and int(tokens.max()) < 7
    assert stats.drafted[0] > 0 and sum(stats.accepted) > 0


# ------------------------------------------------------------------------------------------ statistics
def test_statistics_add_up():
    model = tiny_model(2, head_scale=8.0)
    _, stats = speculative_generate(model, prompt_of(2, 7, 0), 30, depth=2)
    assert stats.forwards + sum(stats.accepted) == stats.new_tokens  # each forward: its accepted drafts + 1
    assert stats.tokens_per_forward == pytest.approx(30 / stats.forwards)
    assert all(0 <= a <= n for a, n in zip(stats.accepted, stats.drafted))
    assert stats.accepted[1] <= stats.accepted[0]  # a depth-2 draft is accepted only after depth 1's
    assert [sum(1 for r in stats.records if r[1] == k) for k in (1, 2)] == stats.drafted
    assert stats.seconds > 0 and stats.tokens_per_second > 0
    assert stats.acceptance_rate == [a / n for a, n in zip(stats.accepted, stats.drafted)]


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input():
    model = tiny_model(1)
    prompt = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="no MTP modules"):
        speculative_generate(tiny_model(0), prompt, 3)
    with pytest.raises(ValueError, match=r"in \[1, 1\]"):
        speculative_generate(model, prompt, 3, depth=2)
    with pytest.raises(ValueError, match="depth"):
        speculative_generate(model, prompt, 3, depth=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        speculative_generate(model, prompt, 3, temperature=-0.5)
    with pytest.raises(ValueError, match="prompt is empty"):
        speculative_generate(model, torch.tensor([], dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        speculative_generate(model, prompt, 39)
    with pytest.raises(TypeError, match="int64"):
        speculative_generate(model, torch.tensor([1.0]), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        plain_generate(model, prompt, 0)
    vocab = model.config.vocab_size
    for decode in (plain_generate, speculative_generate):  # checked once, at the entry (not per decoded token)
        with pytest.raises(ValueError, match=rf"\[0, {vocab}\)"):
            decode(model, torch.tensor([1, vocab]), 3)
        with pytest.raises(TypeError, match="temperature must be a number"):
            decode(model, prompt, 3, temperature="0")


def test_the_prompt_is_read_once_at_the_entry_and_decoding_reads_no_token_back():
    """The prompt's ids are checked at the decoder's entry (one reduction of the prompt, read back to the host);
    the decoding steps inside feed the model its own tokens and reduce none of them for a check."""
    model = tiny_model(2)
    prompt = prompt_of(4, 7, 0)
    for decode in (plain_generate, speculative_generate):
        reduced = id_reductions(lambda: decode(model, prompt, 10))
        assert reduced == [[1, 4]], (decode.__name__, reduced)


def test_accept_sampled_with_given_uniforms():
    """u given: the accepted counts follow it (accept iff u q < p, strictly, while all before were accepted), the
    same as with u drawn from the generator; a u of the wrong shape or dtype is refused."""
    q = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64).expand(4, 2, 4)
    p = torch.tensor([[0.0, 0.5, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4], [0.25] * 4], dtype=torch.float64).expand(4, 3, 4)
    drafts = torch.tensor([[0, 1], [1, 3], [0, 3], [1, 0]])
    u = torch.tensor([[0.0, 0.0], [0.999, 0.5], [0.5, 0.1], [0.3, 0.5]], dtype=torch.float64)
    m, token = accept_sampled(drafts, q, p, torch.Generator().manual_seed(0), u=u)
    assert m.tolist() == [0, 2, 0, 1] and token.shape == (4,)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    u_drawn = torch.rand(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(accept_sampled(drafts, q, p, g1)[0], accept_sampled(drafts, q, p, g2, u=u_drawn)[0])
    with pytest.raises(TypeError, match=r"u must be a float tensor \[B, d\]"):
        accept_sampled(drafts, q, p, u=u[:, :1])
    with pytest.raises(TypeError, match="u must be"):
        accept_sampled(drafts, q, p, u=torch.zeros(4, 2, dtype=torch.int64))
