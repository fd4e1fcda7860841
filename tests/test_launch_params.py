"""kernels/runtime/launch_params.py: the memory-bound kernels' launch tables hold what their
kernels assume (powers of two, LRN's 8-channel planes, the SGD padding the optimizer relies on),
on the GPU rows as well as the interpreter's, for AlexNet's channel counts and any other."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels.runtime import launch_params as lp

FORMATS = [torch.contiguous_format, torch.channels_last]


def power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.fixture(params=["gpu", "interpreter"])
def where(request, monkeypatch):
    """Every picker answered as on a GPU and as under the interpreter."""
    monkeypatch.setattr(lp, "interpreting", lambda: request.param == "interpreter")
    return request.param


def test_flat_rows_are_powers_of_two_with_a_reason():
    for table in (lp.DROPOUT, lp.SGD, lp.AUGMENT):
        for name, row in table.items():
            assert power_of_two(row.block) and power_of_two(row.num_warps) and row.reason, (name, row)


def test_the_sgd_blocks_divide_the_optimizers_padding():
    """alexnet.training.optim pads its flat buffers to SGD_GPU_BLOCK: whole blocks on either path."""
    assert lp.SGD["gpu"].block == lp.SGD_GPU_BLOCK
    assert lp.SGD_GPU_BLOCK % lp.SGD["interpreter"].block == 0


def test_flat_pickers(where):
    assert lp.sgd_launch() is lp.SGD[where] and lp.augment_launch() is lp.AUGMENT[where]
    if where == "gpu":
        assert lp.dropout_launch(128 * 4096) is lp.DROPOUT["small"]
        assert lp.dropout_launch(lp.DROPOUT_LARGE) is lp.DROPOUT["large"]
    else:
        assert lp.dropout_launch(lp.DROPOUT_LARGE) is lp.DROPOUT["interpreter"]


@given(chan=st.sampled_from([1, 3, 8, 48, 96, 128, 192, 256, 384]) | st.integers(1, 600))
def test_lrn_blocks_fit_the_kernel(where, chan):
    for fmt in FORMATS:
        block_p, block_c, warps = lp.lrn_blocks(chan, fmt)
        assert power_of_two(block_p) and power_of_two(block_c) and power_of_two(warps)
        assert block_c % 8 == 0, "the kernel moves channels in planes of 8"
        if where == "gpu" and fmt == torch.channels_last and chan % 8 == 0:
            assert chan % block_c == 0, "a block divides the group's channels when one can"


@given(chan=st.sampled_from([3, 64, 96, 192, 256]) | st.integers(1, 600), backward=st.booleans())
def test_maxpool_blocks_fit_the_kernel(where, chan, backward):
    for fmt in FORMATS:
        block_p, block_c, warps = lp.maxpool_blocks(chan, fmt, backward)
        assert power_of_two(block_p) and power_of_two(block_c) and power_of_two(warps)
        assert block_p * block_c <= 4096


def test_alexnet_layers_get_the_swept_tiles(where):
    """The rows bench/sweep_memory.py chose for layer 1 (96 channels NHWC) on an H100."""
    if where == "gpu":
        assert lp.maxpool_blocks(96, torch.channels_last, backward=False) == (32, 32, 8)
        assert lp.maxpool_blocks(64, torch.channels_last, backward=True) == (32, 64, 4)
        assert lp.lrn_blocks(48, torch.channels_last) == (128, 16, 4)
