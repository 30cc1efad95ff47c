"""Expert parallelism ([V3] 3.2, 3.4): the DeepSeekMoE layer spread over the ranks of a process group.

DeepSeek-V3 trains with 64-way expert parallelism over 8 nodes: each GPU holds a few routed experts, and every
MoE layer moves tokens to the GPUs of their experts and back with two all-to-all exchanges ([V3] 3.2). With
group-limited routing the groups are the nodes (``n_groups`` = number of nodes), so a token's experts live on at
most ``topk_groups`` nodes ([V3] 2.1.2; V3: M = 4 of 8 nodes).

- ``placement``: which rank holds which expert, the rows each rank sends (``send_splits``), the nodes a token
  reaches, and V3's node-deduplicated ``dispatch_plan``.
- ``traffic``: the bytes of one layer's dispatch and combine, per rank and across nodes (``Traffic``).
- ``layer``: ``ExpertParallelMoE``, the DeepSeekMoE layer whose routed experts run as dispatch (all-to-all),
  local experts, combine (all-to-all), with the load summed over the ranks before the bias update; the
  differentiable ``all_to_all``; ``expert_parallel_model`` puts it in the tiny model.
- ``step``: one data + expert parallel optimizer step (``expert_parallel_step``).
- ``workers``: what each rank runs under ``distributed.run_ranks`` in notebook 09 and the tests.
- ``cli`` (and ``__main__``): the training command.

Design of the dispatch (stated, and checked by ``checks.expert_parallel``): one row is sent per **(token, expert)
pair**, so a token with two experts on one rank travels twice. DeepSeek-V3's kernels instead send a token once
per *node* over InfiniBand and forward it inside the node over NVLink to the GPUs of its experts ([V3] 3.2.2):
``Traffic`` counts both, the bytes this layer sends and the node-deduplicated bytes V3 would send.

Launch the data-parallel + expert-parallel training of the tiny model on 4 CPU processes, or on 4 GPUs::

    torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 20
    torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 20 --backend nccl
"""
