"""The command line: data + expert parallel training of the tiny DeepSeek model, one process per rank (gloo on
CPUs, nccl on GPUs); it prints each step's loss and all-to-all bytes::

    torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 20
    torchrun --nproc-per-node 4 -m course_lib.parallel.expert_parallel --steps 20 --backend nccl
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from course_lib.core.runtime import seed_everything
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.parallel import arguments as parallel_arguments, distributed
from course_lib.parallel.expert_parallel.layer import expert_parallel_model
from course_lib.parallel.expert_parallel.step import expert_parallel_step
from course_lib.parallel.expert_parallel.traffic import gather_traffic
from course_lib.training.data import synthetic_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m course_lib.parallel.expert_parallel",
                                description="Data + expert parallel training of the tiny DeepSeek model (one "
                                            "process per rank; gloo on CPUs, nccl on GPUs).")
    p.add_argument("--backend", default="gloo", choices=parallel_arguments.BACKENDS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (windows), split evenly over the ranks")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--n-routed-experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument("--topk-groups", type=int, default=0,
                   help="group-limited routing over the nodes: keep this many nodes per token (0 = off)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gamma", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="process-group timeout in seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = distributed.init_from_env(args.backend, args.timeout)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        if args.batch_size % world_size:
            raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world_size} ranks")
        n_nodes = world_size // args.ranks_per_node
        groups = (n_nodes, args.topk_groups) if args.topk_groups else (1, 1)
        corpus = synthetic_task(n_lines=4000, seed=args.seed)
        seed_everything(args.seed)  # the same initial weights on every rank
        config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, expert_dim=32,
                             n_routed_experts=args.n_routed_experts, top_k=args.top_k, n_groups=groups[0],
                             topk_groups=groups[1])
        model = expert_parallel_model(TinyDeepSeek(config), rank, world_size, args.ranks_per_node).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        data_rng = torch.Generator().manual_seed(args.seed)  # the same global batches on every rank
        row_bytes = config.dim * 4  # float32 rows
        # bytes of each step's forward, all layers: between ranks, across nodes per pair, across nodes once per node
        totals = torch.zeros(3, dtype=torch.float64)
        for step in range(1, args.steps + 1):
            batch = corpus.get_batch("train", args.batch_size, args.seq_len, data_rng)
            start = time.perf_counter()
            result = expert_parallel_step(model, optimizer, batch.chunk(world_size)[rank].to(device), gamma=args.gamma)
            seconds = time.perf_counter() - start
            flows = gather_traffic(model, row_bytes)
            sent = torch.tensor([[f.total_bytes(), sum(f.cross_node_bytes_per_node()),
                                  sum(f.dedup_cross_node_bytes_per_node())] for f in flows], dtype=torch.float64)
            totals += sent.sum(dim=0)
            if rank == 0:
                ranks_bytes, node_bytes, once_bytes = (int(b) for b in sent.sum(dim=0))
                print(f"step {step:4d}  loss {result.loss:.4f}  grad norm {result.grad_norm:.3f}  "
                      f"{seconds * 1000:.0f} ms  all-to-all bytes (forward, all layers): between ranks "
                      f"{ranks_bytes:,d}, across nodes {node_bytes:,d} (once per node: {once_bytes:,d})", flush=True)
        if rank == 0:
            mean = (totals / args.steps).tolist()
            print(f"{world_size} ranks ({args.backend}), {n_nodes} node(s), {config.n_routed_experts // world_size} "
                  f"experts per rank, topk_groups {args.topk_groups or 'off'}; mean bytes per step: between ranks "
                  f"{mean[0]:,.0f}, across nodes {mean[1]:,.0f}, once per node {mean[2]:,.0f}")
        distributed.leave_process_group(completed=True)
    finally:
        distributed.leave_process_group(completed=False)
    return 0
