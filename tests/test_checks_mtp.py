"""The checkers of notebook 04: the references pass, stubs are reported, and each common mistake, written the way a
learner writes it, is rejected with its own hint; a learner's crash is explained, never raised."""

import pytest
import torch
import torch.nn.functional as F

from checking import rejected_with, stub
from course_lib.model import mtp
from course_lib.checks import outcome, check_mtp_depth_loss, check_mtp_forward, check_mtp_loss


def test_references_pass():
    assert outcome(check_mtp_depth_loss, mtp.mtp_depth_loss) is True
    assert outcome(check_mtp_loss, mtp.mtp_loss) is True
    assert outcome(check_mtp_forward, mtp.mtp_forward) is True


def test_stubs_return_false(capsys):
    assert outcome(check_mtp_depth_loss, stub) is False
    assert outcome(check_mtp_loss, stub) is False
    assert outcome(check_mtp_forward, stub) is False
    assert capsys.readouterr().out.count("not implemented yet") == 3


# ------------------------------------------------------------------ mtp_depth_loss, written the way learners do
def depth_loss_with_cross_entropy(logits, tokens, k):
    T = tokens.shape[1] - 1
    targets = tokens[:, k + 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum") / (
        T * tokens.shape[0])


def depth_loss_with_loops(logits, tokens, k):
    B, T = tokens.shape[0], tokens.shape[1] - 1
    total = torch.zeros((), dtype=torch.float64)
    for b in range(B):
        for j in range(T - k):
            total = total - torch.log_softmax(logits[b, j].double(), -1)[tokens[b, j + k + 1]]
    return total / T / B


def test_correct_depth_losses_pass():
    assert outcome(check_mtp_depth_loss, depth_loss_with_cross_entropy) is True
    assert outcome(check_mtp_depth_loss, depth_loss_with_loops) is True


def targets_one_too_few(logits, tokens, k):
    T = tokens.shape[1] - 1
    targets = tokens[:, k:-1]  # the token just read
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / (T * len(tokens))


def targets_one_too_many(logits, tokens, k):
    T = tokens.shape[1] - 1
    log_probs = F.log_softmax(logits, dim=-1)
    picked = log_probs.gather(2, tokens[:, k + 2:].unsqueeze(2))  # gather quietly drops the last position
    return -picked.sum() / T / tokens.shape[0]


def targets_one_too_many_with_cross_entropy(logits, tokens, k):
    T = tokens.shape[1] - 1
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, k + 2:].flatten(), reduction="sum") / (T * len(tokens))


def mean_over_positions(logits, tokens, k):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, k + 1:].reshape(-1))


def summed_over_batch(logits, tokens, k):
    T = tokens.shape[1] - 1
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, k + 1:], reduction="sum") / T


def divided_by_tokens_width(logits, tokens, k):
    T = tokens.shape[1]
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, k + 1:], reduction="sum") / T / tokens.shape[0]


def main_model_targets(logits, tokens, k):
    T = tokens.shape[1] - 1
    targets = tokens[:, 1:][:, :logits.shape[1]]  # next-token targets, cut to fit
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum") / (T * tokens.shape[0])


def log_of_softmax(logits, tokens, k):
    T = tokens.shape[1] - 1
    probs = torch.softmax(logits, dim=-1)
    return -torch.log(probs).gather(-1, tokens[:, k + 1:, None]).sum() / (T * tokens.shape[0])


def log_of_softmax_in_float64(logits, tokens, k):
    return log_of_softmax(logits.double(), tokens, k)


def handmade_softmax(logits, tokens, k):
    T = tokens.shape[1] - 1
    probs = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    return -probs.gather(-1, tokens[:, k + 1:, None]).log().sum() / (T * tokens.shape[0])


def forgot_minus(logits, tokens, k):
    T = tokens.shape[1] - 1
    return F.log_softmax(logits, -1).gather(-1, tokens[:, k + 1:, None]).sum() / (T * tokens.shape[0])


def one_loss_per_sequence(logits, tokens, k):
    T = tokens.shape[1] - 1
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, k + 1:], reduction="none").sum(1) / T


def returns_a_float(logits, tokens, k):
    return mtp.mtp_depth_loss(logits, tokens, k).item()


@pytest.mark.parametrize("wrong, phrases", [
    (targets_one_too_few, ["shifted one too few", "tokens[:, k + 1:]"]),
    (targets_one_too_many, ["shifted one too many"]),
    (targets_one_too_many_with_cross_entropy, ["raised ValueError", "different numbers of positions"]),
    (mean_over_positions, ["averaged over the T - k positions", "divides the sum of the T - k terms by T"]),
    (summed_over_batch, ["summed over the batch"]),
    (divided_by_tokens_width, ["T = tokens.shape[1] - 1"]),
    (main_model_targets, ["main model's (the next token t_{i+1}) at every depth"]),
    (log_of_softmax, ["large values", "log of softmax probabilities", "F.log_softmax"]),
    (log_of_softmax_in_float64, ["huge values", "log of softmax probabilities"]),
    (handmade_softmax, ["large values", "F.log_softmax"]),
    (forgot_minus, ["minus sign is missing"]),
    (one_loss_per_sequence, ["shape [2]", "average over the batch"]),
    (returns_a_float, ["Python number", "0-dim tensor"]),
])
def test_depth_loss_mistakes_named(wrong, phrases):
    rejected_with(check_mtp_depth_loss, wrong, *phrases)


def test_depth_loss_crash_is_explained():
    def crashes(logits, tokens, k):
        return logits[tokens]  # indexes logits with token ids

    rejected_with(check_mtp_depth_loss, crashes, "Your mtp_depth_loss raised IndexError", "return logits[tokens]")


# ------------------------------------------------------------------ mtp_loss, written the way learners do
def total_with_mean(depth_logits, tokens, lam):
    losses = torch.stack([mtp.mtp_depth_loss(logits, tokens, k + 1) for k, logits in enumerate(depth_logits)])
    return lam * losses.mean()


def test_correct_totals_pass():
    assert outcome(check_mtp_loss, total_with_mean) is True


def total_without_lambda(depth_logits, tokens, lam):
    D = len(depth_logits)
    return sum(mtp.mtp_depth_loss(logits, tokens, k) for k, logits in enumerate(depth_logits, 1)) / D


def total_without_one_over_d(depth_logits, tokens, lam):
    return lam * sum(mtp.mtp_depth_loss(logits, tokens, k) for k, logits in enumerate(depth_logits, 1))


def total_plain_sum(depth_logits, tokens, lam):
    return sum(mtp.mtp_depth_loss(logits, tokens, k) for k, logits in enumerate(depth_logits, 1))


def total_depths_from_zero(depth_logits, tokens, lam):
    return lam / len(depth_logits) * sum(mtp.mtp_depth_loss(l, tokens, k) for k, l in enumerate(depth_logits))


def total_depths_indexed_from_one(depth_logits, tokens, lam):
    D = len(depth_logits)
    return lam / D * sum(mtp.mtp_depth_loss(depth_logits[k], tokens, k) for k in range(1, D + 1))


def total_collects_depths_from_one(depth_logits, tokens, lam):
    D = len(depth_logits)
    per_depth = [depth_logits[k] for k in range(1, D + 1)]
    return lam / D * sum(mtp.mtp_depth_loss(l, tokens, k) for k, l in enumerate(per_depth, 1))


def total_main_model_targets(depth_logits, tokens, lam):
    T = tokens.shape[1] - 1
    losses = [F.cross_entropy(l.transpose(1, 2), tokens[:, 1:l.shape[1] + 1], reduction="sum") / (T * len(tokens))
              for l in depth_logits]
    return lam / len(losses) * sum(losses)


def total_mean_over_positions(depth_logits, tokens, lam):
    losses = [F.cross_entropy(l.transpose(1, 2), tokens[:, k + 1:]) for k, l in enumerate(depth_logits, 1)]
    return lam * sum(losses) / len(losses)


def total_last_depth_only(depth_logits, tokens, lam):
    D = len(depth_logits)
    return lam * mtp.mtp_depth_loss(depth_logits[-1], tokens, D)


@pytest.mark.parametrize("wrong, phrases", [
    (total_without_lambda, ["lambda is missing"]),
    (total_without_one_over_d, ["the 1 / D is missing"]),
    (total_plain_sum, ["neither lambda nor 1 / D"]),
    (total_depths_from_zero, ["raised ValueError", "number the depths from 1"]),
    (total_depths_indexed_from_one, ["raised ValueError", "depth k's logits are depth_logits[k - 1]"]),
    (total_collects_depths_from_one, ["raised IndexError", "depth_logits[0] .. depth_logits[D - 1]"]),
    (total_main_model_targets, ["main model's targets"]),
    (total_mean_over_positions, ["averaged over their T - k positions"]),
    (total_last_depth_only, ["only the last depth counts"]),
])
def test_total_mistakes_named(wrong, phrases):
    rejected_with(check_mtp_loss, wrong, *phrases)


# ------------------------------------------------------------------ mtp_forward, written the way learners do
def forward_with_module_calls(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    h = norm_h(h_prev[:, : T - k])
    e = norm_e(emb[:, k:])
    return block(proj(torch.cat((h, e), dim=2)))


def forward_with_split_projection(h_prev, emb, k, norm_h, norm_e, proj, block):
    # [h ; e] W^T = h W_h^T + e W_e^T: the same projection, without the concatenation
    T, dim = emb.shape[1], emb.shape[2]
    w_h, w_e = proj.weight[:, :dim], proj.weight[:, dim:]
    return block(norm_h(h_prev[:, :T - k]) @ w_h.T + norm_e(emb[:, k:]) @ w_e.T)


def test_correct_forwards_pass():
    assert outcome(check_mtp_forward, forward_with_module_calls) is True
    assert outcome(check_mtp_forward, forward_with_split_projection) is True


def forward_without_norms(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(proj(torch.cat([h_prev[:, :T - k], emb[:, k:]], -1)))


def forward_without_embedding_norm(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(proj(torch.cat([norm_h(h_prev[:, :T - k]), emb[:, k:]], -1)))


def forward_norms_swapped(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(proj(torch.cat([norm_e(h_prev[:, :T - k]), norm_h(emb[:, k:])], -1)))


def forward_own_token_embedding(h_prev, emb, k, norm_h, norm_e, proj, block):
    n = emb.shape[1] - k
    return block(proj(torch.cat([norm_h(h_prev[:, :n]), norm_e(emb[:, :n])], -1)))


def forward_shifts_both(h_prev, emb, k, norm_h, norm_e, proj, block):
    n = emb.shape[1] - k
    return block(proj(torch.cat([norm_h(h_prev[:, -n:]), norm_e(emb[:, -n:])], -1)))


def forward_embedding_first(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(proj(torch.cat([norm_e(emb[:, k:]), norm_h(h_prev[:, :T - k])], -1)))


def forward_not_trimmed(h_prev, emb, k, norm_h, norm_e, proj, block):
    return block(proj(torch.cat([norm_h(h_prev), norm_e(emb[:, k:])], -1)))


def forward_untrimmed_unshifted(h_prev, emb, k, norm_h, norm_e, proj, block):
    return block(proj(torch.cat([norm_h(h_prev), norm_e(emb[:, :h_prev.shape[1]])], -1)))


def forward_projects_before_concatenating(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(torch.cat([proj(norm_h(h_prev[:, :T - k])), proj(norm_e(emb[:, k:]))], -1))


def forward_without_block(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return proj(torch.cat([norm_h(h_prev[:, :T - k]), norm_e(emb[:, k:])], -1))


def forward_block_on_concatenation(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return proj(block(torch.cat([norm_h(h_prev[:, :T - k]), norm_e(emb[:, k:])], -1)))


def forward_normalises_after_projection(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(norm_h(proj(torch.cat([h_prev[:, :T - k], emb[:, k:]], -1))))


def forward_adds(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(norm_h(h_prev[:, :T - k]) + norm_e(emb[:, k:]))


@pytest.mark.parametrize("wrong, phrases", [
    (forward_without_norms, ["RMSNorms are missing"]),
    (forward_without_embedding_norm, ["embeddings are not normalised"]),
    (forward_norms_swapped, ["norm_h and norm_e are swapped"]),
    (forward_own_token_embedding, ["Emb(t_i)", "emb[:, k:]"]),
    (forward_shifts_both, ["LAST T - k positions of h_prev"]),
    (forward_embedding_first, ["embedding first", "either order is fine", "paper's order"]),
    (forward_not_trimmed, ["raised RuntimeError", "trim h_prev to h_prev[:, :T - k]"]),
    (forward_untrimmed_unshifted, ["T - k = 5 positions", "first T - k positions", "emb[:, k:]"]),
    (forward_projects_before_concatenating, ["raised RuntimeError", "concatenate the two normalised inputs first"]),
    (forward_without_block, ["Transformer block is missing"]),
    (forward_block_on_concatenation, ["raised ValueError", "project the 2 dim concatenation with proj first"]),
    (forward_normalises_after_projection, ["normalisation comes after the projection"]),
    (forward_adds, ["added, not concatenated"]),
])
def test_forward_mistakes_named(wrong, phrases):
    rejected_with(check_mtp_forward, wrong, *phrases)


def test_forward_returning_a_tuple_is_explained():
    def returns_tuple(h_prev, emb, k, norm_h, norm_e, proj, block):
        return forward_with_module_calls(h_prev, emb, k, norm_h, norm_e, proj, block), None

    rejected_with(check_mtp_forward, returns_tuple, "torch tensor of shape [2, 5, 8] was expected")


# ------------------------------------------------------------------ right values, wrong gradients
def depth_loss_from_item(logits, tokens, k):
    return torch.tensor(mtp.mtp_depth_loss(logits, tokens, k).item())


def depth_loss_detached_normaliser(logits, tokens, k):
    total = -F.log_softmax(logits, -1).gather(-1, tokens[:, k + 1:, None]).sum()
    count = total.detach() / mtp.mtp_depth_loss(logits, tokens, k).detach()  # "B * T, read off the result"
    return total / count + total - total.detach()


def mtp_loss_of_floats(depth_logits, tokens, lam):
    D = len(depth_logits)
    return torch.tensor(lam / D * sum(mtp.mtp_depth_loss(l, tokens, k).item() for k, l in enumerate(depth_logits, 1)))


def forward_detached_history(h_prev, emb, k, norm_h, norm_e, proj, block):
    T = emb.shape[1]
    return block(proj(torch.cat([norm_h(h_prev[:, :T - k].detach()), norm_e(emb[:, k:])], -1)))


@pytest.mark.parametrize("check, wrong, phrase", [
    (check_mtp_depth_loss, depth_loss_from_item, "carries no gradient"),
    (check_mtp_depth_loss, depth_loss_detached_normaliser, "times the reference's"),
    (check_mtp_loss, mtp_loss_of_floats, "carries no gradient"),
    (check_mtp_forward, forward_detached_history, "its gradient differs"),
])
def test_wrong_gradients_are_named(check, wrong, phrase):
    message = rejected_with(check, wrong, phrase)
    assert "gives the right value" in message


def test_forward_says_what_is_wrong_first_in_one_line():
    message = rejected_with(check_mtp_forward, forward_norms_swapped, "norm_h and norm_e are swapped")
    first = message.splitlines()[0]
    assert "swapped" in first and "[[" not in first and len(message.splitlines()) <= 3, message
