"""The tiny model cut into pipeline stages ([V3] 3.2.1: V3 runs its 61 layers on 16 pipeline stages).

The pipelined model is TinyDeepSeek's MAIN model, cut at block boundaries::

    stage 0:          embedding, blocks[0 : b_1]
    stage s:          blocks[b_s : b_{s+1}]
    stage n - 1:      blocks[b_{n-1} : n_layers], final RMSNorm, output head -> logits

The blocks are shared out as evenly as possible, the earlier stages taking one more when they do not divide
(``block_ranges``). What it leaves out, and why:

- the Multi-Token Prediction modules: they share the embedding (stage 0) and the output head (the last stage)
  and read the last block's hidden states, so a pipeline that trains them has to send the embedding's output or
  its weights across the whole pipeline (V3 places the shallowest layers, the embedding, and the deepest layers,
  the head, on the same PP rank to share them, [V3] 2.2 and 3.2.1: DualPipe puts stage 0 and the last stage on one
  rank). The model here must have ``mtp_depth = 0``; its loss is the main next-token loss, [V3] eq. 24 with k = 0.
- the aux-loss-free balancing's bias update: it runs after the optimizer step, outside the forward and backward
  the pipeline schedules ([V3] 2.1.2), so it is no part of the comparison. Each MoE layer counts its load in
  training mode as it does on one process.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.core.validation import boundary
from course_lib.model import mtp
from course_lib.model.tiny import TinyDeepSeek
from course_lib.parallel.pipeline import arguments


def block_ranges(n_layers: int, n_stages: int) -> list[tuple[int, int]]:
    """The blocks [first, end) of each stage: ``n_layers`` blocks over ``n_stages`` stages, as evenly as possible,
    the first ``n_layers % n_stages`` stages one block more. Needs n_layers >= n_stages (the caller checks)."""
    base, extra = divmod(n_layers, n_stages)
    ends = [0]
    for s in range(n_stages):
        ends.append(ends[-1] + base + (s < extra))
    return list(zip(ends[:-1], ends[1:]))


class StageModule(nn.Module):
    """Stage ``stage`` of ``n_stages`` of ``model`` (see the module's docstring), sharing the model's parameters.

    forward(x): stage 0 takes tokens int64 [b, T]; the others the previous stage's hidden states float [b, T, dim].
    It returns hidden states [b, T, dim], or on the last stage the logits [b, T, vocab_size]. ``model_names``
    maps each of its parameter names to the model's (``blocks.0.attn...`` of stage 1 is ``blocks.2.attn...`` of the
    model when stage 0 holds two blocks). Raises TypeError for a model that is not a TinyDeepSeek, ValueError for
    a stage outside [0, n_stages), more stages than blocks, or a model with MTP modules.
    """

    def __init__(self, model: TinyDeepSeek, stage: int, n_stages: int) -> None:
        super().__init__()
        arguments.stage_module(model, stage, n_stages)
        self.stage, self.n_stages = stage, n_stages
        self.first_block, end = block_ranges(model.config.n_layers, n_stages)[stage]
        last = stage == n_stages - 1
        self.embed = model.embed if stage == 0 else None
        self.blocks = nn.ModuleList(model.blocks[self.first_block:end])
        self.norm = model.norm if last else None
        self.head = model.head if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)) if self.head is not None else h

    def model_names(self) -> dict[str, str]:
        """This stage's parameter names -> the same parameters' names in the whole model."""
        names = {}
        for name, _ in self.named_parameters():
            if name.startswith("blocks."):
                index, rest = name[len("blocks."):].split(".", 1)
                name_in_model = f"blocks.{self.first_block + int(index)}.{rest}"
            else:
                name_in_model = name
            names[name] = name_in_model
        return names

    def extra_repr(self) -> str:
        last = self.first_block + len(self.blocks) - 1
        return f"stage={self.stage} of {self.n_stages}, blocks {self.first_block}..{last}"


def pipeline_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The loss the last stage computes for one micro-batch: the main next-token loss ([V3] eq. 24, k = 0),
    ``mtp.mtp_depth_loss(logits, tokens, 0)``. logits [b, T, vocab], tokens int64 [b, T + 1] (the windows, given to
    the schedule as its ``target``) -> scalar. torch's schedules average it over the micro-batches (their
    ``scale_grads``), so with micro-batches of equal size the step's loss and gradients are the whole batch's."""
    return mtp.mtp_depth_loss(logits, tokens, 0)


@boundary(arguments.reference_step)
def reference_step(model: TinyDeepSeek, tokens: torch.Tensor,
                   n_micro_batches: int = 1) -> tuple[float, dict[str, torch.Tensor]]:
    """The single-process step the pipeline must equal: the main loss of the windows ``tokens`` int64 [B, T + 1]
    through the whole ``model`` (train mode), as the mean of the losses of ``n_micro_batches`` equal micro-batches
    (what torch's schedules compute), and its gradients. With equal micro-batches that is the whole batch's loss,
    up to rounding: the routers score in float32 ([V3]'s gating in FP32), so a micro-batch's scores round
    differently from the whole batch's (about 1e-9 in the gradients of the tiny model in float64). Returns (loss,
    parameter name -> gradient); the model's gradients are set (zeroed first). Raises TypeError / ValueError for a
    model with MTP modules, tokens that are not int64 windows, or a batch that does not split into equal
    micro-batches."""
    model.train()
    model.zero_grad(set_to_none=True)
    total = 0.0
    for chunk in tokens.chunk(n_micro_batches):
        loss = pipeline_loss(model(chunk[:, :-1]), chunk) / n_micro_batches
        loss.backward()
        total += float(loss.detach())
    return total, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
