"""Every rank tunes the convolutions it will run, then adopts rank 0's choices, so all ranks run
the same tiles (the same summation order). Called by the training loop before the first step."""
from __future__ import annotations

import torch
import torch.distributed as dist


def share_tuning(group=None) -> int:
    """Every rank adopts rank 0's autotuning choices (the convolution's launch plans,
    kernels/conv/common.py), so all ranks run the same tiles, i.e. the same summation order:
    call it on every rank after each has run the same warm-up pass (which tunes) and before
    the first step that counts. Returns the number of plans adopted (0 with one process)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return 0
    from kernels import adopt_plans, export_plans

    rows = [export_plans() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(rows, src=0, group=group)
    return adopt_plans(rows[0]) if dist.get_rank() != 0 else len(rows[0])


def tune_and_share(model, optimizer, batch_size: int, image_size: int, dtype: torch.dtype, channels_last: bool,
                   conv1, device) -> int:
    """One forward and backward of a blank batch laid out as the training loader's (conv1's
    padded input: alexnet.data.augment.crop_batch), so that every rank tunes the convolutions it
    will run, then `share_tuning`. Changes no weight: eval mode (no dropout draw), the
    gradients dropped. Call on every rank, before the first step."""
    from alexnet.data.augment import crop_batch

    n, size = batch_size, image_size
    x = crop_batch(torch.zeros(n, size, size, 3, dtype=torch.uint8, device=device),
                   torch.zeros(n, 2, dtype=torch.int32, device=device), torch.zeros(n, dtype=torch.bool, device=device),
                   torch.zeros(n, 3, device=device), torch.zeros(size, size, 3, device=device), size, dtype,
                   channels_last, ops="triton", conv1=conv1)
    model.eval()
    try:
        model(x).float().sum().backward()
    finally:
        model.train()
        optimizer.zero_grad(set_to_none=True)
    return share_tuning()
