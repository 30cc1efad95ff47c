"""Expert parallelism on torch.distributed (gloo, CPU processes of run_ranks or torchrun) against the single-process
DeepSeekMoE.

The distributed tests spawn 2 or 4 processes (one thread each); each stays under a minute on a loaded 2-core
machine, most of it the processes' start-up.
"""

import copy
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from course_lib.parallel import distributed
from course_lib.parallel.expert_parallel import layer as ep_layer, placement, workers
from course_lib.parallel.expert_parallel import step as ep_step, traffic as ep_traffic
from course_lib.training.data import synthetic_task
from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe.layer import DeepSeekMoE
from course_lib.training.step import train_step
from tiny_models import tiny_config


def _moe(n_experts: int = 8, top_k: int = 3, n_groups: int = 1, topk_groups: int = 1, n_shared: int = 1,
         seed: int = 0) -> DeepSeekMoE:
    torch.manual_seed(seed)
    moe = DeepSeekMoE(dim=16, expert_dim=8, n_routed_experts=n_experts, n_shared_experts=n_shared, top_k=top_k,
                      n_groups=n_groups, topk_groups=topk_groups)
    with torch.no_grad():
        moe.bias.copy_(0.1 * torch.randn(n_experts))
    return moe


# --------------------------------------------------------------------------------------------- splits and bytes
def _splits_loop(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    out = [0] * world_size
    for token in indices.tolist():
        for expert in token:
            out[expert // (n_experts // world_size)] += 1
    return out


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_send_splits_equal_a_loop_and_sum_to_pairs(world_size):
    g = torch.Generator().manual_seed(world_size)
    indices = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(50)])
    splits = placement.send_splits(indices, 16, world_size)
    assert splits == _splits_loop(indices, 16, world_size)
    assert sum(splits) == indices.numel()


def test_send_splits_reject_uneven_placement():
    with pytest.raises(ValueError, match="divisible by world_size"):
        placement.send_splits(torch.zeros(3, 2, dtype=torch.long), 6, 4)


def test_traffic_equals_a_loop_over_pairs():
    g = torch.Generator().manual_seed(0)
    indices = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(40)])  # 16 experts, 8 ranks, 4 nodes
    source = torch.arange(40) % 8
    t = ep_traffic.traffic(indices, source, 16, 8, ranks_per_node=2, row_bytes=10)
    dispatch, combine, cross, dedup = [0] * 8, [0] * 8, [0] * 4, [0] * 4
    for token, (experts, src) in enumerate(zip(indices.tolist(), source.tolist())):
        for expert in experts:
            dst = expert // 2
            if dst != src:
                dispatch[src] += 10
                combine[dst] += 10
            if dst // 2 != src // 2:
                cross[src // 2] += 10
                cross[dst // 2] += 10
        for node in {e // 4 for e in experts} - {src // 2}:
            dedup[src // 2] += 10
            dedup[node] += 10
    assert t.dispatch_bytes_per_rank() == dispatch
    assert t.combine_bytes_per_rank() == combine
    assert t.cross_node_bytes_per_node() == cross
    assert t.dedup_cross_node_bytes_per_node() == dedup
    assert t.total_bytes() == sum(dispatch) + sum(combine)
    nodes = placement.destination_nodes(indices, 16, 8, 2)
    assert nodes.tolist() == [len({e // 4 for e in experts}) for experts in indices.tolist()]


@pytest.mark.parametrize("world_size, ranks_per_node, rank", [(8, 2, 5), (8, 4, 0), (4, 1, 3), (8, 8, 2)])
def test_dispatch_plan_equals_a_loop_and_the_traffic_accounting(world_size, ranks_per_node, rank):
    g = torch.Generator().manual_seed(rank)
    indices = torch.stack([torch.randperm(32, generator=g)[:6] for _ in range(30)])  # 32 experts, top_k = 6
    plan = placement.dispatch_plan(indices, 32, world_size, ranks_per_node, rank)
    rows, forward = [], []
    for token, experts in enumerate(indices.tolist()):
        ranks = {e // (32 // world_size) for e in experts}
        for node in {r // ranks_per_node for r in ranks} - {rank // ranks_per_node}:
            rows.append((node, token))
            forward.append([node * ranks_per_node + j in ranks for j in range(ranks_per_node)])
    order = sorted(range(len(rows)), key=rows.__getitem__)  # by node, then token
    assert plan.sends.tolist() == [[rows[i][1], rows[i][0]] for i in order]
    assert plan.forward.tolist() == [forward[i] for i in order] and plan.forward.dtype == torch.bool
    flow = ep_traffic.traffic(indices, torch.full((30,), rank), 32, world_size, ranks_per_node, row_bytes=1)
    per_node = torch.bincount(plan.sends[:, 1], minlength=world_size // ranks_per_node).tolist()
    own = rank // ranks_per_node
    assert per_node == [0 if n == own else r for n, r in enumerate(flow.node_rows[rank])]
    # what crosses InfiniBand, both directions: each row once out (dispatch) and once back (combine)
    assert sum(flow.dedup_cross_node_bytes_per_node()) == 2 * len(plan.sends)


def test_dispatch_plan_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank must lie"):
        placement.dispatch_plan(torch.zeros(3, 2, dtype=torch.long), 8, 4, 2, 4)
    with pytest.raises(TypeError, match="rank must be an int"):
        placement.dispatch_plan(torch.zeros(3, 2, dtype=torch.long), 8, 4, 2, 1.0)


def test_group_limited_routing_bounds_the_destination_nodes():
    moe = _moe(n_experts=16, top_k=4, n_groups=4, topk_groups=2)
    _, _, indices = moe.route(torch.randn(200, 16))
    assert int(placement.destination_nodes(indices, 16, 8, 2).max()) <= 2


# --------------------------------------------------------------------------------------------- errors
def test_layer_rejects_groups_that_are_not_nodes():
    with pytest.raises(ValueError, match="groups = nodes"):
        ep_layer.ExpertParallelMoE(_moe(n_groups=4, topk_groups=2), rank=0, world_size=4, ranks_per_node=2)
    with pytest.raises(ValueError, match="divisible by world_size"):
        ep_layer.ExpertParallelMoE(_moe(), rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank must lie"):
        ep_layer.ExpertParallelMoE(_moe(), rank=4, world_size=4)


def test_layer_without_a_process_group_says_so():
    layer = ep_layer.ExpertParallelMoE(_moe(), rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="process group"):
        layer(torch.randn(3, 16))


def test_layer_with_redundant_experts_holds_its_slots_and_splits_pairs_between_copies():
    moe = _moe()
    phy2log = torch.tensor([3, 4, 7, 3, 6, 6, 5, 2, 1, 5, 4, 0])  # EPLB's placement of 8 experts on 4 ranks
    layer = ep_layer.ExpertParallelMoE(moe, rank=1, world_size=4, phy2log=phy2log)
    assert torch.equal(layer.w_up, moe.w_up[[3, 6, 6]])
    experts = torch.tensor([6, 3, 6, 6, 0, 3, 6])
    slots = layer.replica_slots(experts)
    assert slots.tolist() == [4, 0, 5, 4, 11, 3, 5]  # copies of 6 (slots 4, 5) and of 3 (0, 3) in turn
    assert (phy2log[slots] == experts).all()
    unplaced = ep_layer.ExpertParallelMoE(moe, rank=1, world_size=4)
    assert torch.equal(unplaced.replica_slots(experts), experts)  # without redundancy, slot = expert
    with pytest.raises(ValueError, match="without a slot"):
        ep_layer.ExpertParallelMoE(moe, rank=0, world_size=4, phy2log=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]))
    with pytest.raises(ValueError, match="divisible by world_size"):
        ep_layer.ExpertParallelMoE(moe, rank=0, world_size=4, phy2log=torch.arange(10) % 8)


@pytest.mark.slow
def test_layer_serving_eplb_replicas_equals_the_single_process_layer():
    """EPLB's placement (inference.eplb) served by 4 ranks: the same outputs, and the hot expert's rows spread."""
    from course_lib.inference.eplb import rebalance_experts

    moe = _moe(top_k=2).eval()
    x = torch.randn(4 * 12, 16, generator=torch.Generator().manual_seed(1))
    x[:24] += 2 * moe.centroids[3].detach()  # half the tokens prefer expert 3
    with torch.no_grad():
        out = moe(x)
    load = torch.bincount(moe.last_indices.reshape(-1), minlength=8)[None]
    phy2log = rebalance_experts(load, 12, 1, 1, 4).phy2log[0]
    served = distributed.run_ranks(workers.serve_worker, 4, (moe, x, phy2log), timeout_s=30, deadline_s=55)
    plain = distributed.run_ranks(workers.serve_worker, 4, (moe, x, None), timeout_s=30, deadline_s=55)
    for results in (served, plain):
        torch.testing.assert_close(torch.cat([r["out"] for r in results]), out, rtol=0, atol=1e-5)
    rows = [[r["recv_rows"] for r in results] for results in (served, plain)]
    assert sum(rows[0]) == sum(rows[1]) == x.shape[0] * 2
    assert max(rows[0]) < max(rows[1]), rows


def test_layer_holds_its_slice_of_the_experts():
    moe = _moe()
    layer = ep_layer.ExpertParallelMoE(moe, rank=1, world_size=4)
    assert torch.equal(layer.w_up, moe.w_up[2:4]) and torch.equal(layer.centroids, moe.centroids)
    assert layer.w_up.data_ptr() != moe.w_up.data_ptr()  # copies: training one does not touch the other


# --------------------------------------------------------------------------------------------- distributed
def _reference(moe: DeepSeekMoE, x: torch.Tensor, grad_out: torch.Tensor, steps: int, gamma: float):
    moe = copy.deepcopy(moe).train()
    out = moe(x)
    (out * grad_out).sum().backward()
    moe.load.zero_()
    biases = [moe.bias.clone()]
    for _ in range(steps):
        moe(x)
        moe.update_bias(gamma)
        biases.append(moe.bias.clone())
    return moe, out.detach(), torch.stack(biases)


@pytest.mark.slow
@pytest.mark.parametrize("world_size, ranks_per_node, groups", [(2, 1, (1, 1)), (4, 2, (2, 1))])
def test_layer_equals_single_process_layer(world_size, ranks_per_node, groups):
    moe = _moe(n_groups=groups[0], topk_groups=groups[1], n_shared=1 if world_size == 4 else 0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(world_size * 6, 16, generator=g)
    x[: 6] += 2 * moe.centroids[0].detach()  # rank 0's tokens prefer expert 0: the ranks' loads differ
    grad_out = torch.randn(x.shape, generator=g)
    steps, gamma = 6, 0.01
    results = distributed.run_ranks(workers.layer_worker, world_size, (moe, x, grad_out, ranks_per_node, steps, gamma),
                                    timeout_s=30, deadline_s=55)
    ref, out, biases = _reference(moe, x, grad_out, steps, gamma)
    torch.testing.assert_close(torch.cat([r["out"] for r in results]), out, rtol=0, atol=1e-5)
    params = dict(ref.named_parameters())
    for name, grad in results[0]["grads"].items():
        if name in ("w_gate", "w_up", "w_down"):  # each rank holds its own slice of the experts
            grad = torch.cat([r["grads"][name] for r in results])
        torch.testing.assert_close(grad, params[name].grad, rtol=0, atol=1e-5, msg=f"gradient of {name}")
    for r in results:  # the global load: every rank's bias equals the single-process bias, step after step
        torch.testing.assert_close(r["biases"], biases, rtol=0, atol=1e-6)
    # per-rank counts: the ranks' biases drift apart (and away from the single-process bias)
    finals = torch.stack([r["biases_per_rank"][-1] for r in results])
    assert (finals - finals[0]).abs().max() > gamma / 2
    assert sum(r["send_splits"][j] for r in results for j in range(world_size)) == x.shape[0] * moe.top_k


@pytest.mark.slow
def test_a_failing_rank_stops_the_others_with_an_error():
    start = time.monotonic()
    with pytest.raises(distributed.DistributedRunError) as caught:
        distributed.run_ranks(workers.layer_worker, 2, (_moe(), torch.randn(8, 16), torch.randn(8, 16), 1, 0, 0.01, 1),
                              timeout_s=5, deadline_s=55)
    assert time.monotonic() - start < 55
    error = caught.value
    assert error.hung == []  # rank 0 stopped by itself: the collective raised, nothing had to be killed
    assert set(error.errors) == {0, 1}
    assert "fails on purpose" in error.errors[1]


def _tiny_model():
    corpus = synthetic_task(n_lines=300, seed=0)
    config = tiny_config(vocab_size=corpus.tokenizer.vocab_size, n_routed_experts=4, mtp_depth=2)
    torch.manual_seed(0)
    return corpus, TinyDeepSeek(config)


def _assert_same_training(results, model, micro_batches, lr, gamma, clip):
    """The ranks' training equals step.train_step on ``micro_batches`` (one list of micro-batches per step)."""
    ref = copy.deepcopy(model)
    optimizer = torch.optim.SGD(ref.parameters(), lr=lr)
    losses = [train_step(ref, optimizer, step, balance_mode="loss_free", gamma=gamma, grad_clip=clip).loss
              for step in micro_batches]
    for r in results:
        assert r["losses"] == pytest.approx(losses, abs=1e-5)
    for name, value in ref.state_dict().items():
        if any(name.endswith(w) for w in (".w_gate", ".w_up", ".w_down")) and ".ffn." in name:
            got = torch.cat([r["state"][name] for r in results])
        else:
            got = results[0]["state"][name]
            torch.testing.assert_close(results[1]["state"][name], got, rtol=0, atol=0)  # replicas stay identical
        torch.testing.assert_close(got, value, rtol=0, atol=1e-5, msg=f"{name} after two steps")


@pytest.mark.slow
@pytest.mark.parametrize("shares", [None, [1, 3]], ids=["equal shares", "1 and 3 windows"])
def test_data_and_expert_parallel_step_equals_the_single_process_step(shares):
    """Unequal shares: each rank's loss is weighted by its share of the positions, not by 1 / world_size (which
    made the step differ from the single-process step on the same batch, silently)."""
    corpus, model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    batches = [corpus.get_batch("train", 4, 16, g) for _ in range(2)]
    lr, gamma, clip = 0.1, 0.01, 0.5
    results = distributed.run_ranks(workers.train_worker, 2, (model, batches, 1, lr, gamma, clip, shares), timeout_s=30,
                                    deadline_s=55)
    _assert_same_training(results, model, [[b] for b in batches], lr, gamma, clip)


@pytest.mark.slow
def test_ranks_with_windows_of_different_lengths_train_as_micro_batches_of_those_lengths():
    corpus, model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    batches = [[corpus.get_batch("train", 3, 8, g), corpus.get_batch("train", 2, 16, g)] for _ in range(2)]
    lr, gamma = 0.1, 0.01
    results = distributed.run_ranks(workers.train_worker, 2, (model, batches, 1, lr, gamma, 0.0), timeout_s=30,
                                    deadline_s=55)
    _assert_same_training(results, model, batches, lr, gamma, 0.0)


@pytest.mark.slow
def test_the_command_line_runs_under_torchrun():
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "course_lib.parallel.expert_parallel", "--steps", "2", "--batch-size", "4", "--seq-len", "16",
               "--ranks-per-node", "1", "--topk-groups", "1", "--timeout", "30"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=55, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step    2  loss" in done.stdout and "2 ranks (gloo), 2 node(s)" in done.stdout, done.stdout


@pytest.mark.slow  # two processes: about 4 s
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in /proc (Linux)")
def test_destroy_process_group_ends_the_group_even_after_an_optimizer_step():
    """The first optimizer step imports torch._dynamo, which kept references to the group then alive: the group
    outlived destroy_process_group, and its gloo threads, still running at exit, aborted the process (SIGABRT).
    In a fresh interpreter (this one may have imported torch._dynamo already): the group's threads are gone after
    destroy_process_group."""
    import subprocess
    import sys

    script = (
        "import os, torch, torch.distributed as dist\n"
        "from course_lib.parallel import distributed\n"
        "distributed.init_process_group(0, 1, distributed.free_port())\n"
        "threads = len(os.listdir('/proc/self/task'))\n"
        "p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)\n"
        "torch.optim.SGD([p], lr=0.1).step()  # imports torch._dynamo\n"
        "dist.destroy_process_group()\n"
        "print(threads, len(os.listdir('/proc/self/task')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    with_group, after = (int(n) for n in done.stdout.split())
    assert with_group > 1 and after == 1, f"threads with the group: {with_group}, after destroy_process_group: {after}"


@pytest.mark.slow
def test_the_readme_command_exits_cleanly_again_and_again():
    """The README's command as written: 4 ranks, torchrun's static rendezvous (no --standalone), 20 steps. A rank
    that tore down its process group while a peer still used it died at exit (SIGABRT, 'terminate called without
    an active exception') after printing everything, and torchrun failed with a ChildFailedError, in some runs."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
               "--master-port", str(distributed.free_port()),  # the default port, 29500, may be taken on the machine
               "-m", "course_lib.parallel.expert_parallel", "--steps", "20"]
    for run in range(3):
        done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "ChildFailedError" not in output and "terminate called" not in output, \
            f"run {run + 1}: exit status {done.returncode}\n{output[-3000:]}"
        assert "step   20  loss" in done.stdout and "4 ranks (gloo), 4 node(s)" in done.stdout, done.stdout


def _private_megabytes(rank: int, world_size: int) -> float:
    """Run by each rank: the memory that only this process holds (private pages, USS), MB."""
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    kilobytes = sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return kilobytes / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads /proc/self/smaps_rollup (Linux)")
def test_ranks_share_the_pages_of_torch():
    """Each spawned rank imported torch anew: about 150-220 MB of private pages per rank, 4 ranks next to a
    notebook's kernel at the edge of a small (1-2 GB) machine. Forked from a server that imported torch (and
    torch._dynamo), the ranks share those pages (about 27 MB of their own each)."""
    megabytes = distributed.run_ranks(_private_megabytes, 2, timeout_s=30, deadline_s=110)
    assert max(megabytes) < 100, f"private memory of each rank: {[round(m) for m in megabytes]} MB"


def test_placement_helpers_reject_bad_indices():
    with pytest.raises(ValueError, match=r"\[tokens, top_k\]"):
        placement.send_splits(torch.tensor([0, 1]), 8, 4)
    with pytest.raises(TypeError, match="integer tensor"):
        placement.send_splits(torch.tensor([[0.0, 1.0]]), 8, 4)
    with pytest.raises(ValueError, match=r"lie in \[0, 7\]"):
        placement.expert_ranks(torch.tensor([[0, 9]]), 8, 4)  # would name a rank that does not exist
    with pytest.raises(ValueError, match=r"lie in \[0, 7\]"):
        placement.destination_nodes(torch.tensor([[0, 9]]), 8, 4, 2)
    indices, source = torch.tensor([[0, 1], [2, 3]]), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="source_rank"):
        ep_traffic.traffic(indices, source.float(), 8, 4)
    for row_bytes in (0, -4):
        with pytest.raises(ValueError, match="row_bytes must be an int >= 1"):
            ep_traffic.traffic(indices, source, 8, 4, 1, row_bytes)
    with pytest.raises(TypeError, match="row_bytes must be an int"):
        ep_traffic.traffic(indices, source, 8, 4, 1, 0.5)


def _nested_worker_factory():
    def worker(rank, world_size):
        return rank
    return worker


def test_run_ranks_rejects_what_a_new_process_cannot_import():
    for fn in (lambda rank, world_size: rank, _nested_worker_factory()):
        with pytest.raises(ValueError, match="cannot be found that way"):
            distributed.run_ranks(fn, 2)
    with pytest.raises(TypeError, match="world_size must be an int"):
        distributed.run_ranks(workers.layer_worker, 2.0)
    with pytest.raises(ValueError, match="timeout_s"):
        distributed.run_ranks(workers.layer_worker, 2, timeout_s=0)


def test_run_ranks_rejects_a_function_defined_in_a_notebook(monkeypatch):
    import sys

    def worker(rank, world_size):
        return rank
    worker.__module__, worker.__qualname__ = "__main__", "worker"  # as a notebook cell defines it
    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)  # a kernel's __main__ has no file
    with pytest.raises(ValueError, match="defined in a notebook"):
        distributed.run_ranks(worker, 2)


# --------------------------------------------------------------------------------------------- a failed step
class Boom(Exception):
    pass


def _nan_loss(model, optimizer):
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")


def _forward_hook_raises(model, optimizer):  # after the last MoE layer counted its load and ran its all-to-alls
    def hook(module, args, output):
        raise Boom("from a forward hook")
    ep_layer.expert_parallel_layers(model)[-1].register_forward_hook(hook)


def _keyboard_interrupt_in_forward(model, optimizer):  # before the last layer's dispatch
    def hook(module, args):
        raise KeyboardInterrupt
    ep_layer.expert_parallel_layers(model)[-1].register_forward_pre_hook(hook)


def _backward_raises(model, optimizer):
    def hook(grad):
        raise Boom("from a backward hook")
    model.embed.weight.register_hook(hook)


def _optimizer_step_raises_after_updating(model, optimizer):
    real = optimizer.step

    def step(*args, **kwargs):
        real(*args, **kwargs)  # the weights and the moments change, then:
        raise Boom("after the optimizer step")
    optimizer.step = step


def _bias_update_raises_after_the_last_exchange(model, optimizer):  # the other ranks finish the step's work
    layer = ep_layer.expert_parallel_layers(model)[-1]
    real = layer.update_bias

    def update_bias(gamma, global_load):
        real(gamma, global_load)  # all-reduces the load and moves the bias, then:
        raise Boom("after the last layer's bias update")
    layer.update_bias = update_bias


STEP_FAILURES = {f.__name__.strip("_"): f for f in (_nan_loss, _forward_hook_raises, _keyboard_interrupt_in_forward,
                                                     _backward_raises, _optimizer_step_raises_after_updating,
                                                     _bias_update_raises_after_the_last_exchange)}


def _state(model, optimizer):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [layer.load.clone() for layer in ep_layer.expert_parallel_layers(model)],
            copy.deepcopy(optimizer.state_dict()))


def failing_step_worker(rank, world_size, model, batches, failure, fail_rank):
    """One good step (optimizer state, moved biases), loads set as if counted outside a step, then a step in which
    ``STEP_FAILURES[failure]`` strikes on rank ``fail_rank``. Returns what the step raised and whether the weights,
    the biases, the loads and the optimizer state are as before it."""
    local = ep_layer.expert_parallel_model(model, rank, world_size)
    optimizer = torch.optim.AdamW(local.parameters(), lr=1e-2)
    ep_step.expert_parallel_step(local, optimizer, batches[0].chunk(world_size)[rank])
    for i, layer in enumerate(ep_layer.expert_parallel_layers(local)):
        layer.load.fill_(float(i + 3))  # counts from forwards outside a step are kept, not mixed with the step's
    if rank == fail_rank:
        STEP_FAILURES[failure](local, optimizer)
    weights, loads, optimizer_state = _state(local, optimizer)
    try:
        ep_step.expert_parallel_step(local, optimizer, batches[1].chunk(world_size)[rank])
        raised = None
    except BaseException as error:  # noqa: BLE001 (KeyboardInterrupt included)
        raised = type(error).__name__
        # a rank whose step failed leaves its group, as the training command does (its ranks raise out of main):
        # the peers still waiting in a collective then fail at once; run_ranks' closing barrier is for ranks that
        # completed every collective
        dist.destroy_process_group()
    after_weights, after_loads, after_optimizer = _state(local, optimizer)
    same = all(torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
               for a, b in zip(weights.values(), after_weights.values()))
    same &= all(torch.equal(a, b) for a, b in zip(loads, after_loads))
    same &= all(torch.equal(after_optimizer["state"][i][k], v) for i, s in optimizer_state["state"].items()
                for k, v in s.items())
    return {"raised": raised, "same": same, "no_grads": all(p.grad is None for p in local.parameters())}


@pytest.mark.slow
@pytest.mark.parametrize("failure", STEP_FAILURES)
def test_a_step_that_fails_on_one_rank_leaves_every_rank_as_before(failure):
    """The expert-parallel step rolls back like the single-process one (weights, optimizer state, bias, load),
    on the failing rank and on the others, which get an error from a collective instead of hanging."""
    _, model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (4, 17), generator=g) for _ in range(2)]
    start = time.monotonic()
    results = distributed.run_ranks(failing_step_worker, 2, (model, batches, failure, 1), timeout_s=20,
                                    deadline_s=55)
    assert time.monotonic() - start < 55
    for rank, result in enumerate(results):
        assert result["raised"] is not None, f"rank {rank} kept a step that rank 1 failed"
        assert result["same"] and result["no_grads"], f"rank {rank}: {result}"
    expected = {"nan_loss": "TrainingDiverged", "keyboard_interrupt_in_forward": "KeyboardInterrupt"}
    assert results[1]["raised"] == expected.get(failure, "Boom")


def test_the_expert_parallel_layer_is_the_deepseek_moe_layer():
    """One MoE layer: routing, forward, routing state are DeepSeekMoE's; only the routed experts' execution
    (dispatch -> local experts -> combine) and the load of the bias update (summed over ranks) differ."""
    assert issubclass(ep_layer.ExpertParallelMoE, DeepSeekMoE)
    for name in ("route", "forward", "__getstate__", "_apply", "_load_from_state_dict"):
        assert getattr(ep_layer.ExpertParallelMoE, name) is getattr(DeepSeekMoE, name), name


def test_layer_checks_a_users_hidden_states_as_the_single_process_layer_does():
    layer = ep_layer.ExpertParallelMoE(_moe(), rank=0, world_size=2)  # no process group needed to reject them
    with pytest.raises(ValueError, match="ExpertParallelMoE got hidden states with NaN or inf"):
        layer(torch.full((3, 16), float("nan")))
    with pytest.raises(ValueError, match=r"ExpertParallelMoE expects a non-empty tensor \[\.\.\., 16\]"):
        layer(torch.ones(3, 7))
