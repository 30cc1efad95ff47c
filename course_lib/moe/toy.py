"""Small load-balancing experiments for notebooks 02 and 03: a trainable toy MoE and a no-training simulation.

``train_toy_moe``
    trains one ``moe.DeepSeekMoE`` layer on a synthetic regression task (``ClusterTask``: tokens from many input
    clusters, each with its own linear target map) from a *skewed* start: the router's centroids favour the same
    ``top_k`` experts for every token. Without balancing the routing stays collapsed onto those experts (the others
    never get a token, so they never get a gradient either). The balance mode is ``"none"``, ``"aux"`` (the
    classical batch-wise auxiliary loss ``balance.balance_loss`` with weight ``alpha``) or ``"loss_free"`` (the bias
    update ``DeepSeekMoE.update_bias`` with speed ``gamma``, once per step). A run takes a few seconds on a CPU.

``simulate_bias_balancing``
    needs no training: a router whose scores come from a fixed, skewed distribution (``skewed_scores``) routes a fresh
    batch every step, and only the bias moves. Fast enough for an interactive widget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from course_lib.core.validation import boundary
from course_lib.moe import arguments, balance
from course_lib.moe.layer import DeepSeekMoE
from course_lib.moe.routing import topk_route

BalanceMode = Literal["none", "aux", "loss_free"]  # balance.BALANCE_MODES


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run torch on one CPU thread, then restore the previous setting. On matrices this small, splitting each
    operation over threads costs more than it saves (ten times more on a busy 2-core machine); the numbers are
    the same either way."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy task and model. The defaults train in about 2 s per 300 steps on one CPU core."""

    dim: int = 16  # token vector size
    expert_dim: int = 8  # hidden size of each SwiGLU expert: small, so that specialising pays off
    n_experts: int = 8  # routed experts (no shared expert: the routed ones must do all the work)
    top_k: int = 2
    n_clusters: int = 32  # input clusters, each with its own target map: more than one per expert
    noise: float = 0.3  # spread of the tokens around their cluster centre
    offset: float = 2.0  # length of the offset that every token shares: the direction the skewed router favours
    skew: float = 4.0  # how much the first top_k centroids favour that shared direction at the start
    batch_size: int = 256  # tokens per training step
    lr: float = 1e-2  # Adam learning rate

    def __post_init__(self) -> None:
        arguments.toy_config(self)


class ClusterTask:
    """Tokens x = offset + centre_c + noise, target y = A_c (x - offset), for a random cluster c per token.

    ``offset`` [dim] is shared by all tokens; ``centres`` [n_clusters, dim] and ``maps`` [n_clusters, dim, dim] are
    fixed by the seed. A small expert can fit a few clusters' maps, not all of them: the task rewards routing each
    cluster to its own experts.
    """

    @boundary(arguments.cluster_task)
    def __init__(self, config: ToyConfig, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.config = config
        direction = torch.randn(config.dim, generator=g)
        self.direction = direction / direction.norm()  # [dim], unit length
        self.offset = config.offset * self.direction  # [dim]
        self.centres = torch.randn(config.n_clusters, config.dim, generator=g)  # [n_clusters, dim]
        self.maps = torch.randn(config.n_clusters, config.dim, config.dim, generator=g) / math.sqrt(config.dim)

    @boundary(arguments.sample)
    def sample(self, n_tokens: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of n_tokens: (x [n_tokens, dim], y [n_tokens, dim]). Raises TypeError / ValueError for an
        n_tokens that is not an int >= 1."""
        cluster = torch.randint(0, self.config.n_clusters, (n_tokens,), generator=generator)  # [n_tokens]
        centred = self.centres[cluster] + self.config.noise * torch.randn(n_tokens, self.config.dim, generator=generator)
        y = torch.einsum("tij,tj->ti", self.maps[cluster], centred)  # [n_tokens, dim]
        return self.offset + centred, y


@boundary(arguments.make_toy_moe)
def make_toy_moe(config: ToyConfig, task: ClusterTask, seed: int = 0) -> DeepSeekMoE:
    """A DeepSeekMoE layer for the toy task, initialised from ``seed``, with a skewed router: the centroids of
    experts 0..top_k-1 get ``config.skew`` times the task's shared direction, so every token scores them highest.
    Raises TypeError unless given a ToyConfig and a ClusterTask."""
    with torch.random.fork_rng(devices=[]):  # the notebook's global random state is left alone
        torch.manual_seed(seed)
        moe = DeepSeekMoE(config.dim, config.expert_dim, config.n_experts, 0, config.top_k)
    with torch.no_grad():
        moe.centroids[: config.top_k] += config.skew * task.direction
    return moe


@dataclass
class TrainHistory:
    """What ``train_toy_moe`` records, per training step and on a held-out set at the end.

    task_loss: [steps] mean squared error of each training batch (without any balance loss);
    load: [steps, n_experts] assignments per expert in each step's batch; max_vio: [steps] MaxVio_batch;
    bias: [steps, n_experts] the routing bias after each step (zero unless mode is "loss_free");
    eval_loss, eval_max_vio, eval_load: task loss, MaxVio_global and load [n_experts] on held-out tokens.
    """

    mode: str
    alpha: float
    gamma: float
    task_loss: torch.Tensor
    load: torch.Tensor
    max_vio: torch.Tensor
    bias: torch.Tensor
    eval_loss: float
    eval_max_vio: float
    eval_load: torch.Tensor

    @property
    def steps(self) -> int:
        return self.task_loss.shape[0]

    def __repr__(self) -> str:
        return (f"TrainHistory(mode={self.mode!r}, steps={self.steps}, alpha={self.alpha:g}, gamma={self.gamma:g}, "
                f"last task loss {float(self.task_loss[-1]):.4f}, MaxVio_batch {float(self.max_vio[-1]):.3f}, "
                f"eval loss {self.eval_loss:.4f}, MaxVio_global {self.eval_max_vio:.3f})")


@boundary(arguments.train_toy_moe)
@one_cpu_thread()
def train_toy_moe(
    mode: BalanceMode = "none",
    steps: int = 300,
    *,
    alpha: float = 0.1,
    gamma: float = 0.01,
    seed: int = 0,
    config: ToyConfig = ToyConfig(),
    n_eval_tokens: int = 4096,
    device: str | torch.device = "cpu",
) -> TrainHistory:
    """Train the toy MoE for ``steps`` Adam steps from the skewed start, with one way of balancing its load.

    mode: "none"; "aux" adds ``balance.balance_loss(scores, top_k, alpha)`` to the task loss; "loss_free" calls
    ``moe.update_bias(gamma)`` after every optimizer step ([V3] 2.1.2). The seed fixes the task, the initial
    weights and the batches, so runs that differ only in mode, alpha or gamma see the same data.
    Returns a ``TrainHistory``. Raises ValueError for a mode not in ``balance.BALANCE_MODES``, TypeError /
    ValueError for steps or n_eval_tokens that are not ints >= 1, alpha or gamma not finite numbers >= 0, and
    TypeError for a config that is not a ToyConfig.
    """
    device = torch.device(device)
    task = ClusterTask(config, seed)
    moe = make_toy_moe(config, task, seed).to(device)
    optimizer = torch.optim.Adam(moe.parameters(), lr=config.lr)
    batches = torch.Generator().manual_seed(seed + 1)
    n = config.n_experts
    task_loss, load, bias = torch.zeros(steps), torch.zeros(steps, n), torch.zeros(steps, n)
    for step in range(steps):
        x, y = (t.to(device) for t in task.sample(config.batch_size, batches))
        loss = ((moe(x) - y) ** 2).mean()
        task_loss[step] = loss.item()
        if mode == "aux":
            loss = loss + balance.balance_loss(moe.last_scores, config.top_k, alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        load[step] = moe.update_bias(gamma if mode == "loss_free" else 0.0).cpu()  # also resets the count
        bias[step] = moe.bias.cpu()
    max_vio = torch.tensor([balance.max_violation(row) for row in load])

    moe.eval()
    with torch.no_grad():
        x, y = (t.to(device) for t in task.sample(n_eval_tokens, torch.Generator().manual_seed(seed + 2)))
        eval_loss = float(((moe(x) - y) ** 2).mean())
        eval_load = moe.last_load.cpu()
    return TrainHistory(mode, alpha, gamma, task_loss, load, max_vio, bias, eval_loss,
                        balance.max_violation(eval_load), eval_load)


@boundary(arguments.smooth)
def smooth(values: torch.Tensor, window: int = 20) -> torch.Tensor:
    """Trailing moving average over ``window`` steps (shorter at the start), for plotting noisy per-step curves.

    values: [steps] -> [steps]. Raises TypeError / ValueError for values that are not a finite 1-D tensor or a
    window that is not an int >= 1.
    """
    sums = torch.cat([torch.zeros(1, dtype=values.dtype), values.cumsum(0)])
    ends = torch.arange(1, values.shape[0] + 1)
    starts = (ends - window).clamp_min(0)
    return (sums[ends] - sums[starts]) / (ends - starts)


# --------------------------------------------------------------------------------------------- simulation
@boundary(arguments.expert_popularity)
def expert_popularity(n_experts: int) -> torch.Tensor:
    """How much the skewed router favours each expert: evenly from +1 (expert 0) to -1 (the last). [n_experts]"""
    return torch.linspace(1.0, -1.0, n_experts)


@boundary(arguments.skewed_scores)
def skewed_scores(n_tokens: int, n_experts: int, skew: float, generator: torch.Generator) -> torch.Tensor:
    """Sigmoid affinities of a router that prefers low-numbered experts: sigmoid(z + skew * popularity_i),
    z ~ N(0, 1) independently per token and expert. skew = 0 is an unbiased random router.

    -> [n_tokens, n_experts], each in (0, 1). Raises TypeError / ValueError for sizes that are not ints >= 1 or
    a skew that is not a finite number.
    """
    z = torch.randn(n_tokens, n_experts, generator=generator)
    return torch.sigmoid(z + skew * expert_popularity(n_experts))


@dataclass
class SimulationHistory:
    """load: [steps, n_experts] assignments per step; max_vio: [steps] MaxVio_batch;
    bias: [steps, n_experts] the bias each step routed with (it only knows the loads of earlier steps)."""

    load: torch.Tensor
    max_vio: torch.Tensor
    bias: torch.Tensor

    def __repr__(self) -> str:
        steps, n_experts = self.load.shape
        return (f"SimulationHistory(steps={steps}, n_experts={n_experts}, MaxVio_batch first "
                f"{float(self.max_vio[0]):.3f}, last {float(self.max_vio[-1]):.3f}, bias range "
                f"[{float(self.bias[-1].min()):.4f}, {float(self.bias[-1].max()):.4f}])")


@boundary(arguments.simulate_bias_balancing)
@one_cpu_thread()
def simulate_bias_balancing(
    steps: int = 200,
    *,
    gamma: float = 0.01,
    skew: float = 1.0,
    n_experts: int = 16,
    top_k: int = 2,
    n_tokens: int = 512,
    seed: int = 0,
) -> SimulationHistory:
    """Route a fresh batch of ``skewed_scores`` each step with ``routing.topk_route(scores, top_k, bias)``, count the
    load with ``balance.expert_load``, then move the bias with ``balance.update_bias(bias, load, gamma)``.

    Nothing is trained: the score distribution stays skewed, and the bias alone has to balance the load.
    Raises TypeError / ValueError for sizes that are not ints >= 1, top_k > n_experts, and gamma or skew that
    are not finite numbers (gamma >= 0).
    """
    generator = torch.Generator().manual_seed(seed)
    bias = torch.zeros(n_experts)
    loads, biases = torch.zeros(steps, n_experts), torch.zeros(steps, n_experts)
    for step in range(steps):
        scores = skewed_scores(n_tokens, n_experts, skew, generator)  # [n_tokens, n_experts]
        _, indices = topk_route(scores, top_k, bias)  # [n_tokens, top_k]
        biases[step] = bias
        loads[step] = balance.expert_load(indices, n_experts)
        bias = balance.update_bias(bias, loads[step], gamma)  # used from the next batch on
    max_vio = torch.tensor([balance.max_violation(row) for row in loads])
    return SimulationHistory(loads, max_vio, biases)
