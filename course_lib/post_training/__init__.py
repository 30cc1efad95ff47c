"""Post-training with GRPO ([V3] 5.2.2; [DSM] 4.1-4.2; [R1]; [V32] 3.1), notebook 14.

- ``grpo``: group-relative advantages, the per-token KL estimator, the clipped GRPO loss.
- ``sampling``: G completions per prompt, batched with the KV cache (``Rollout``), and the training forward's
  log-probabilities.
- ``rewards``: the verifiable task (sorting a word's letters) and its rule-based reward.
- ``routing_replay``: the experts chosen while sampling and in training, their disagreement, and replaying them.
- ``loop``: ``GRPOConfig``, ``grpo_train``, ``GRPOHistory``.
- ``arguments``: the validators of the boundaries.
"""
