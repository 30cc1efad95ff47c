"""Shared test settings: fixed torch threads so timings and float sums are the same from run to run."""

import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
