"""The two-rank model (alexnet/network/parallel.py, alexnet/network/distributed.py) computes the paper's network.

Ranks are spawned processes on the CPU with the gloo backend and the reference ops, in
float64: the sharded model must give the single-device (grouped) model's logits, loss and
every parameter gradient, with dropout on. The GPU variant runs the Triton ops on two gloo
ranks sharing one GPU.
"""
import os
import socket
import time
import traceback
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import assert_close_verbose, requires_gpu

from alexnet.network.config import AlexNetConfig
from alexnet.network.distributed import choose_backend, init_distributed
from alexnet.network.model import AlexNet
from alexnet.network.parallel import (
    ShardedAlexNet,
    exchange_plan,
    merge_state_dicts,
    shard_state_dict,
)

PAPER = AlexNetConfig(ops="reference", channels_last=False, dropout_seed=1234)
SMALL = replace(PAPER, image_size=99)  # 2x2 pool5 maps: exercises the (C, H, W) flatten order
JOIN_TIMEOUT_S = 240  # a hung test fails after this instead of blocking the suite


# ------------------------------------------------------------------ process harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, rank, world, port, out_dir, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.save(fn(rank, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)  # no interpreter teardown: the point is to vanish like a crashed rank
    if dist.is_initialized():
        dist.destroy_process_group()


def run_ranks(fn, world, tmp_path, *args, wait_for=None):
    """Run fn(rank, *args) in `world` spawned processes; returns per rank (exitcode, result
    or the traceback text). `wait_for`: ranks to wait for (the others are killed after)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, str(tmp_path), args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for r in (range(world) if wait_for is None else wait_for):
        procs[r].join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive() and (wait_for is None or r in wait_for)]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S} s"
    out = []
    for r, p in enumerate(procs):
        ok = tmp_path / f"rank{r}.pt"
        err = tmp_path / f"rank{r}.err"
        out.append((p.exitcode, torch.load(ok) if ok.exists() else err.read_text() if err.exists() else None))
    return out


def assert_all_ok(results):
    for r, (code, value) in enumerate(results):
        assert code == 0, f"rank {r} failed (exit {code}):\n{value}"
    return [value for _, value in results]


# ------------------------------------------------------------------ workers (run in the ranks)
def _batch(config, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, config.image_size, config.image_size, generator=g, dtype=dtype)
    return x, torch.randint(0, config.num_classes, (n,), generator=g)


def _step(model, x, y):
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return logits.detach().cpu(), loss.detach().cpu()


def _equivalence_worker(rank, configs, batch, dtype, device):
    """One training step per config on this rank; everything the parent compares."""
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    layout = init_distributed(backend="gloo", timeout_s=120, device=device)
    results = []
    for config in configs:
        torch.manual_seed(0)  # the same seed as the parent's single-device model
        model = ShardedAlexNet(config, layout).to(dtype).train()
        init = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        x, y = _batch(config, batch, dtype)
        logits, loss = _step(model, x.to(layout.device), y.to(layout.device))
        results.append(dict(init=init, logits=logits, loss=loss, traffic=dict(model.traffic),
                            grads={n: p.grad.cpu() for n, p in model.named_parameters()},
                            features=model.eval().features(x.to(layout.device)).detach().cpu()))
    return results


def _data_parallel_worker(rank, config, batch):
    """Two replicas; each rank seeds differently, so replica 1 only matches via the broadcast."""
    layout = init_distributed(backend="gloo", timeout_s=120, device="cpu")
    torch.manual_seed(100 + rank)
    model = ShardedAlexNet(config, layout).double().train()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = _batch(config, batch * layout.data_world, torch.float64)
    mine = slice(layout.data_rank * batch, (layout.data_rank + 1) * batch)  # both ranks of a pair: same images
    _step(model, x[mine], y[mine])
    model.sync_gradients()
    return dict(init=init, grads={n: p.grad for n, p in model.named_parameters()}, traffic=dict(model.traffic),
                layout=(layout.column, layout.replica, layout.replicas, layout.data_rank, layout.data_world))


def _share_tuning_worker(rank):
    """Each rank has its own verified choice for the same conv problem; after share_tuning both
    hold rank 0's, and a verified plan only rank 0 made arrives too; rank 0's unverified plan
    (made with the checks off, kernels/runtime/verify.py) does not."""
    from triton import Config

    from alexnet.training.tuning import share_tuning
    from kernels.conv import plans
    from kernels.conv.fwd import _conv_fwd_kernel
    from kernels.runtime import verify

    init_distributed(backend="gloo", timeout_s=120, device="cpu")
    problem = (_conv_fwd_kernel.fn.__name__, (("C_PER_G", 48), ("KH", 5)), (torch.bfloat16, 128, 27))
    only0 = (_conv_fwd_kernel.fn.__name__, (("C_PER_G", 8),), (7,))
    unverified = (_conv_fwd_kernel.fn.__name__, (("C_PER_G", 4),), (3,))
    plans._PLANS[problem] = Config({"BLOCK_M": 64 * (rank + 1)}, num_warps=4 * (rank + 1))
    verify.STATE.plans[problem] = "verified"
    if rank == 0:
        plans._PLANS[only0] = Config({"BLOCK_M": 16}, num_warps=2)
        verify.STATE.plans[only0] = "verified"
        plans._PLANS[unverified] = Config({"BLOCK_M": 32}, num_warps=2)  # no verify.STATE.plans entry
    shared = share_tuning()
    mine = plans._PLANS[problem]
    return dict(shared=shared, block_m=mine.kwargs["BLOCK_M"], warps=mine.num_warps,
                only0=plans._PLANS[only0].kwargs["BLOCK_M"] if only0 in plans._PLANS else None,
                unverified=unverified in plans._PLANS, status=verify.STATE.plans.get(only0))


def test_every_rank_adopts_rank_0s_verified_tuning_only(tmp_path):
    results = assert_all_ok(run_ranks(_share_tuning_worker, 2, tmp_path))
    assert (results[0]["shared"], results[1]["shared"]) == (3, 2), results  # rank 0 sent 3, rank 1 took 2
    for r in results:
        assert (r["block_m"], r["warps"], r["only0"], r["status"]) == (64, 4, 16, "verified"), results
    assert results[1]["unverified"] is False, results


def _failing_worker(rank, how):
    """Rank 1 crashes (or stalls) before the first collective; rank 0 runs a step."""
    layout = init_distributed(backend="gloo", timeout_s=5, device="cpu")
    model = ShardedAlexNet(replace(SMALL, image_size=67), layout)
    if rank == 1:
        if how == "raise":
            raise RuntimeError("rank 1 fails on purpose")
        time.sleep(JOIN_TIMEOUT_S)
    _step(model, *_batch(model.config, 2, torch.float32))
    return "finished"


# ------------------------------------------------------------------ tests
def _single_device_reference(config, batch, dtype, device="cpu"):
    torch.manual_seed(0)
    model = AlexNet(config).to(device, dtype).train()
    x, y = _batch(config, batch, dtype)
    logits, loss = _step(model, x.to(device), y.to(device))
    grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
    return model, logits, loss, grads, model.eval().features(x.to(device)).detach().cpu()


def _check_equivalence(results, configs, batch, dtype, device, rtol, atol):
    for i, config in enumerate(configs):
        model, logits, loss, grads, feats = _single_device_reference(config, batch, dtype, device)
        per_rank = [r[i] for r in results]
        # Seeded alike, the pair starts from exactly the single-device weights.
        full_init = {k: v.cpu() for k, v in model.state_dict().items()}
        for name, t in merge_state_dicts([r["init"] for r in per_rank]).items():
            assert_close_verbose(t, full_init[name], rtol=0, atol=0, check_dtype=True,
                                 reason=f"{name}: the same seeded init, bit for bit")
        for r in per_rank:  # both ranks hold the whole logits
            why = f"{dtype} sums split over two ranks, other orders"
            assert_close_verbose(r["logits"], logits, rtol=rtol, atol=atol * logits.abs().max().item(),
                                 check_dtype=True, reason=f"logits: {why}")
            assert_close_verbose(r["loss"], loss, rtol=rtol, atol=0, check_dtype=True, reason=f"loss: {why}")
            assert_close_verbose(r["features"], feats, rtol=rtol, atol=atol * feats.abs().max().item(),
                                 check_dtype=True, reason=f"features: {why}")
        merged = merge_state_dicts([r["grads"] for r in per_rank])
        assert merged.keys() == grads.keys()
        for name, g in grads.items():
            assert_close_verbose(merged[name], g, rtol=rtol, atol=atol * g.abs().max().item(), check_dtype=True,
                                 reason=f"{name}: {dtype} gradients summed over two ranks, other orders")
        assert_close_verbose(per_rank[0]["grads"]["fc8.bias"], per_rank[1]["grads"]["fc8.bias"], rtol=0, atol=0,
                             check_dtype=True, reason="fc8's bias gradient, all-reduced: the same on both ranks")
        # The bytes each rank sent are the ones computed from the shapes.
        element = torch.empty((), dtype=dtype).element_size()
        for r in per_rank:
            traffic = {k: v for k, v in r["traffic"].items() if k[0] != "features"}
            planned = {}
            for e in exchange_plan(config, batch, element):
                planned[(e.point, "forward")] = e.forward_bytes
                if e.backward_bytes:
                    planned[(e.point, "backward")] = e.backward_bytes
            assert traffic == planned


def test_two_ranks_match_the_grouped_model(tmp_path):
    configs = [PAPER, replace(SMALL, channels_last=True, overlap_pool=False)]
    results = assert_all_ok(run_ranks(_equivalence_worker, 2, tmp_path, configs, 2, torch.float64, "cpu"))
    _check_equivalence(results, configs, 2, torch.float64, "cpu", rtol=1e-10, atol=1e-12)


def test_four_ranks_are_two_data_parallel_replicas(tmp_path):
    config, batch = replace(SMALL, dropout=0.0), 2
    results = assert_all_ok(run_ranks(_data_parallel_worker, 4, tmp_path, config, batch))
    assert [r["layout"] for r in results] == [(0, 0, 2, 0, 2), (1, 0, 2, 0, 2), (0, 1, 2, 1, 2), (1, 1, 2, 1, 2)]
    for a, b in ((0, 2), (1, 3)):  # replica 1 starts from replica 0's weights
        for name, t in results[a]["init"].items():
            assert_close_verbose(results[b]["init"][name], t, rtol=0, atol=0, check_dtype=True,
                                 reason=f"{name}: replica 0's weights, broadcast: bit for bit")
    model = AlexNet(config).double().train()
    model.load_state_dict(merge_state_dicts([results[0]["init"], results[1]["init"]]))
    _step(model, *_batch(config, 2 * batch, torch.float64))  # one model, the concatenated batch
    for rank, r in enumerate(results):
        expected = shard_state_dict({n: p.grad for n, p in model.named_parameters()}, rank % 2)
        for name, g in expected.items():
            assert_close_verbose(r["grads"][name], g, rtol=1e-10, atol=1e-12 * g.abs().max().item(), check_dtype=True,
                                 reason=f"rank {rank} {name}: float64 gradients averaged over replicas, other orders")
        planned = exchange_plan(config, batch, 8, replicas=2, grad_element_size=8)[-1]
        assert r["traffic"][("gradients", "backward")] == planned.backward_bytes


@pytest.mark.parametrize("how", ["raise", "stall"])
def test_a_failing_rank_stops_the_other(tmp_path, how):
    """Rank 1 crashes, or stalls past the 5 s timeout; rank 0 must exit with an error naming
    the exchange, not hang."""
    (code0, err0), (code1, _) = run_ranks(_failing_worker, 2, tmp_path, how, wait_for=[0, 1] if how == "raise" else [0])
    assert code0 != 0, f"rank 0 did not fail: {err0}"
    assert "ExchangeError" in err0 and "all-gather before conv3" in err0, err0
    if how == "raise":
        assert code1 != 0


def test_state_dict_round_trip():
    torch.manual_seed(0)
    full = AlexNet(SMALL).state_dict()
    shards = [shard_state_dict(full, r) for r in (0, 1)]
    for r, shard in enumerate(shards):  # the shapes of a column model, name for name
        column = AlexNet(SMALL, column=r).state_dict()
        assert {k: v.shape for k, v in shard.items()} == {k: v.shape for k, v in column.items()}
    merged = merge_state_dicts(shards)
    assert merged.keys() == full.keys()
    for name, t in full.items():
        assert torch.equal(merged[name], t), name
    assert torch.equal(shards[1]["conv2.weight"], full["conv2.weight"][128:])  # group 1 = column 1
    assert torch.equal(shards[1]["fc8.weight"], full["fc8.weight"][:, 2048:])


def test_exchange_plan_follows_the_shapes():
    plan = {e.point: e for e in exchange_plan(PAPER, 128, replicas=2)}
    assert plan["conv3"].forward_bytes == plan["conv3"].backward_bytes == 128 * 128 * 13 * 13 * 4
    assert plan["fc6"].forward_bytes == 128 * 4608 * 4
    assert plan["fc7"].forward_bytes == 128 * 2048 * 4
    assert (plan["fc8"].forward_bytes, plan["fc8"].backward_bytes) == (128 * 1000 * 4, 0)
    column_params = (60_965_224 - 1000) // 2 + 1000  # half of everything, plus the replicated fc8 bias
    assert plan["gradients"].backward_bytes == column_params * 4  # ring all-reduce, 2 replicas


def test_choose_backend():
    assert choose_backend(2, cuda_devices=2) == "nccl"
    assert choose_backend(2, cuda_devices=8) == "nccl"
    assert choose_backend(2, cuda_devices=1) == "gloo"  # NCCL refuses two ranks on one GPU
    assert choose_backend(2, cuda_devices=0) == "gloo"


def test_init_distributed_outside_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed()


@requires_gpu
def test_two_ranks_match_the_grouped_model_with_triton_on_one_gpu(tmp_path, monkeypatch):
    """Two gloo ranks sharing the GPU, Triton ops, fp32 (tf32 off), dropout on."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    configs = [replace(PAPER, ops="triton", channels_last=True), replace(SMALL, ops="triton", channels_last=False)]
    results = assert_all_ok(run_ranks(_equivalence_worker, 2, tmp_path, configs, 4, torch.float32, "cuda"))
    _check_equivalence(results, configs, 4, torch.float32, "cuda", rtol=1e-4, atol=1e-5)


def test_tune_and_share_changes_no_weight_and_draws_no_dropout():
    """The trainer's pre-training pass (one blank forward/backward, then share_tuning): in one
    process nothing to share, and the weights, gradients and dropout state are as before."""
    from alexnet.network.model import AlexNet
    from alexnet.training.optim import FlatPaperSGD, param_groups
    from alexnet.training.tuning import tune_and_share

    config = replace(SMALL, channels_last=True)  # the reference ops: quick on the CPU (the batch: Triton's augment)
    model = AlexNet(config).train()
    optimizer = FlatPaperSGD(param_groups(model, 5e-4), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dropout_state = model.dropout.get_rng_state("cpu")
    assert tune_and_share(model, optimizer, 2, config.image_size, torch.float32, True, config.convs[0], "cpu") == 0
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [torch.equal(a, b) for a, b in zip(dropout_state, model.dropout.get_rng_state("cpu"))] == [True] * 2
