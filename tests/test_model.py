"""The single-device AlexNet (alexnet/network/model.py): the paper's sizes, init, ablations, dropout streams.

CPU tests use the plain-PyTorch reference ops; the Triton model is compared with them on a GPU.
An independent oracle written with torch.nn.functional alone (below) checks the wiring of
every ablation variant.
"""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import CUDA, DEVICE, MEMORY_FORMATS, assert_close, assert_close_verbose, requires_gpu

import kernels
import kernels.reference as reference
from alexnet.network.config import BIAS_ONE_LAYERS, AlexNetConfig, layer_shapes
from alexnet.network.layers import ColumnDropout, LocalResponseNorm, column_seed
from alexnet.network.model import AlexNet

PAPER = AlexNetConfig(ops="reference", channels_last=False, dropout_seed=7)
SMALL = replace(PAPER, image_size=99)  # 99 -> 24 -> 11 -> 5 -> 2: every layer, 2x2 maps into fc6

@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return AlexNet(PAPER)


def functional_alexnet(params: dict, x: torch.Tensor, config: AlexNetConfig) -> torch.Tensor:
    """Eval-mode logits from torch.nn.functional alone (PyTorch's LRN divides alpha by size;
    LRN runs on each column's maps separately, as on the paper's two GPUs)."""
    act = torch.relu if config.activation == "relu" else torch.tanh
    window, stride = config.pool
    h = x
    for i, spec in enumerate(config.convs, start=1):
        h = act(F.conv2d(h, params[f"conv{i}.weight"], params[f"conv{i}.bias"], spec.stride, spec.padding,
                         groups=spec.groups))
        if i in (1, 2) and config.lrn:
            h = torch.cat([F.local_response_norm(column, config.lrn_size, config.lrn_alpha * config.lrn_size,
                                                 config.lrn_beta, config.lrn_k)
                           for column in h.chunk(config.columns, dim=1)], dim=1)
        if i in (1, 2, 5):
            h = F.max_pool2d(h, window, stride)
    h = act(F.linear(h.flatten(1), params["fc6.weight"], params["fc6.bias"]))
    h = act(F.linear(h, params["fc7.weight"], params["fc7.bias"]))
    return F.linear(h, params["fc8.weight"], params["fc8.bias"])


def test_parameter_count_is_the_papers(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == 60_965_224


def test_parameters_per_layer_follow_the_table(paper_model):
    # kernels x (input maps per kernel x kernel area + 1 bias), section 3.5
    table = {"conv1": 96 * (3 * 11 * 11 + 1), "conv2": 256 * (48 * 5 * 5 + 1), "conv3": 384 * (256 * 3 * 3 + 1),
             "conv4": 384 * (192 * 3 * 3 + 1), "conv5": 256 * (192 * 3 * 3 + 1), "fc6": 4096 * (9216 + 1),
             "fc7": 4096 * (4096 + 1), "fc8": 1000 * (4096 + 1)}
    counts = {name: sum(p.numel() for p in getattr(paper_model, name).parameters()) for name in table}
    assert counts == table


def test_shapes_and_neurons_per_layer(paper_model):
    seen = {}
    def record(m, i, o, name):
        seen.setdefault(name, []).append(o.shape)

    hooks = [getattr(paper_model, name).register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name))
             for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "pool", "fc6", "fc7")]
    paper_model.eval()
    with torch.no_grad():
        logits = paper_model(torch.randn(2, 3, 224, 224))
    for h in hooks:
        h.remove()
    expected = layer_shapes(PAPER)
    assert expected["pool5"] == (256, 6, 6) and PAPER.fc6_in == 9216
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert seen[name] == [(2, *expected[name])], name
    assert seen["pool"] == [(2, *expected[p]) for p in ("pool1", "pool2", "pool5")]
    assert logits.shape == (2, 1000)
    # The paper's neuron counts, except its conv1 slip (253,440 printed; 55*55*96 = 290,400).
    neurons = paper_model.neurons()
    assert neurons["conv1"] == 55 * 55 * 96 == 290_400
    assert [neurons[n] for n in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")] == \
        [186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000]


def test_paper_initialisation(paper_model):
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(paper_model, name)
        w = layer.weight.detach().double()
        n = w.numel()
        assert abs(w.mean().item()) < 6 * 0.01 / math.sqrt(n), name
        assert w.std().item() == pytest.approx(0.01, rel=6 / math.sqrt(2 * n) + 1e-3), name
        expected_bias = 1.0 if name in BIAS_ONE_LAYERS else 0.0
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, expected_bias)), name


@pytest.mark.parametrize("changes", [
    pytest.param({}, id="paper-224"),
    pytest.param({"image_size": 99}, id="paper-99"),
    pytest.param({"image_size": 99, "lrn": False}, id="no-lrn"),
    pytest.param({"image_size": 99, "overlap_pool": False}, id="pool-2x2"),
    pytest.param({"image_size": 99, "activation": "tanh"}, id="tanh"),
    pytest.param({"image_size": 99, "activation": "tanh", "lrn": False}, id="tanh-no-lrn"),
    pytest.param({"image_size": 99, "columns": 1}, id="one-column"),
    pytest.param({"image_size": 99, "channels_last": True}, id="channels-last"),
])
def test_matches_functional_oracle(changes):
    config = replace(PAPER, **changes)
    model = AlexNet(config).double().eval()
    x = torch.randn(2, 3, config.image_size, config.image_size, dtype=torch.float64)
    with torch.no_grad():  # larger weights, so that the signal, not the biases of 1, drives every layer
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.mul_(10)
    params = {k: v.detach() for k, v in model.state_dict().items()}
    expected = functional_alexnet(params, x, config)
    with torch.no_grad():
        actual = model(x)
    assert_close_verbose(actual, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item(), check_dtype=True,
                         reason="float64 network against its functional spelling, other summation orders")


def test_ablation_structure():
    assert not any(isinstance(m, LocalResponseNorm) for m in AlexNet(replace(SMALL, lrn=False)).modules())
    model = AlexNet(replace(SMALL, lrn=False))
    assert model.conv1.relu and model.conv2.relu  # ReLU moves into the conv epilogue
    assert AlexNet(replace(SMALL, overlap_pool=False)).pool.kernel_size == 2
    # 2x2/2 pooling also gives 55 -> 27 -> 13 -> 6 at 224: fc6 still takes 9216 inputs.
    assert replace(PAPER, overlap_pool=False).fc6_in == 9216
    # One column (section 3.2): half the kernels in conv1-4, all 256 in conv5 (footnote 2), no groups.
    one = AlexNet(replace(PAPER, columns=1))
    assert [getattr(one, f"conv{i}").weight.shape[0] for i in range(1, 6)] == [48, 128, 192, 192, 256]
    assert all(getattr(one, f"conv{i}").groups == 1 for i in range(1, 6))
    assert one.fc6.weight.shape == (4096, 9216)


def test_features_are_fc7_activations():
    model = AlexNet(SMALL).eval()
    x = torch.randn(3, 3, 99, 99)
    seen = []
    model.fc7.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        feats = model.features(x)
        model(x)
    assert feats.shape == (3, 4096) and (feats >= 0).all()
    # fc7's module output is before its ReLU (which the dropout layer applies, fused in training)
    assert_close_verbose(feats, torch.relu(seen[-1]), rtol=0, atol=0, check_dtype=True,
                         reason="the same values: bit for bit")
    assert (seen[-1] < 0).any()


def test_training_mode_dropout_is_seeded_per_model():
    x = torch.randn(2, 3, 99, 99)
    a, b = AlexNet(SMALL), AlexNet(SMALL)
    b.load_state_dict(a.state_dict())
    c = AlexNet(replace(SMALL, dropout_seed=8))
    c.load_state_dict(a.state_dict())
    fa, fb, fc = (m.features(x) for m in (a, b, c))
    assert torch.equal(fa, fb)             # same dropout_seed: the same units dropped
    assert not torch.equal(fa, fc)
    assert ((fa == 0) != (a.eval().features(x) == 0)).any()  # dropout did something


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("ops", ["reference", "triton"])
def test_grouped_lrn_normalises_each_column_alone(ops, fmt):
    """LRN windows stop at the column boundary, forward and backward, in both layouts."""
    lrn = {"reference": reference.relu_lrn, "triton": kernels.relu_lrn}[ops]
    x = (30 * torch.randn(2, 16, 5, 7, device=DEVICE)).contiguous(memory_format=fmt).requires_grad_()
    y = LocalResponseNorm(lrn, 5, 1e-4, 0.75, 2.0, groups=2)(x)
    x64 = x.detach().double().requires_grad_()
    expected = torch.cat([reference.relu_lrn(column) for column in x64.chunk(2, dim=1)], dim=1)
    assert_close(y, expected, torch.float32)
    grad = torch.randn_like(expected)
    y.backward(grad.float())
    expected.backward(grad)
    assert_close(x.grad, x64.grad, torch.float32)
    assert not torch.allclose(expected, reference.relu_lrn(x64))  # one window across the boundary differs


@pytest.mark.parametrize("ops", ["reference", "triton"])
def test_column_dropout_equals_per_column_streams(ops):
    """The single-device dropout over (B, 2F) == each column's own dropout on its (B, F) half:
    the property that makes the two-rank model drop the same units (both calls of the layer:
    fc6, then fc7)."""
    dropout, column_op = {"reference": (reference.dropout, None),
                          "triton": (kernels.dropout, kernels.column_dropout)}[ops]
    x = torch.randn(3, 2 * 96, device=DEVICE) + 3.0
    both = ColumnDropout(dropout, 0.5, seed=11, columns=(0, 1), column_op=column_op)
    halves = [ColumnDropout(dropout, 0.5, seed=11, columns=(c,), column_op=column_op) for c in (0, 1)]
    for _call in range(2):
        y = both(x)
        expected = torch.cat([half(x.chunk(2, dim=1)[c].contiguous()) for c, half in enumerate(halves)], dim=1)
        assert_close_verbose(y, expected, rtol=0, atol=0, check_dtype=True, reason="the same masks: bit for bit")
        assert not torch.equal(y[:, :96] == 0, y[:, 96:] == 0)  # independent streams per column


def test_column_dropout_layer_draws_the_same_masks_with_either_implementation(monkeypatch):
    """The project's layer is one op on every device: on a plain CPU its torch-ops
    implementation draws the Triton kernel's masks, so a model trained there and one on
    the kernels (here: the interpreter, or CUDA) drop the same units for the same seed."""
    x = torch.randn(4, 2 * 40) + 3.0
    kernel = ColumnDropout(kernels.dropout, 0.5, seed=5, columns=(0, 1), column_op=kernels.column_dropout)
    plain = ColumnDropout(kernels.dropout, 0.5, seed=5, columns=(0, 1), column_op=kernels.column_dropout)
    for _call in range(2):
        expected = kernel(x.to(DEVICE)).cpu()
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert_close_verbose(plain(x), expected, rtol=0, atol=0, check_dtype=True,
                             reason="the same masks: bit for bit")
        monkeypatch.setenv("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")


def test_column_seeds_are_distinct_streams():
    seeds = {column_seed(5, column, replica) for column in (0, 1) for replica in range(4)}
    assert len(seeds) == 8 and column_seed(5, 1, 2) == column_seed(5, 1, 2) != column_seed(6, 1, 2)


@pytest.mark.parametrize("pinned", [False, True], ids=["rebound", "pinned"])
def test_dropout_rng_state_round_trip(pinned):
    """get/set_rng_state restore the call count; pinned (as for a CUDA graph), the count stays
    in one tensor that every call advances."""
    drop = ColumnDropout(kernels.dropout, 0.5, seed=3, columns=(0, 1), column_op=kernels.column_dropout)
    x = (torch.randn(4, 64, device=DEVICE) + 3.0).requires_grad_()
    state = drop.get_rng_state(DEVICE)
    if pinned:
        drop.pin()
    counter = drop.streams(DEVICE)[1]
    first = drop(x)
    assert not torch.equal(first, drop(x))  # the streams move on
    assert [int(s) for s in drop.get_rng_state(DEVICE)] == [2, 2]
    assert (drop.streams(DEVICE)[1] is counter) == pinned and int(counter) == (2 if pinned else 0)
    drop.set_rng_state(state, DEVICE)
    assert torch.equal(first, drop(x))
    first.sum().backward()  # the count's tensors changed since: the backward still has its own
    assert torch.equal(x.grad, torch.where(first != 0, 2.0, 0.0))
    with pytest.raises(ValueError, match="columns"):
        drop.set_rng_state(state[:1], DEVICE)
    with pytest.raises(ValueError, match="call count"):
        drop.set_rng_state([torch.tensor([1]), torch.tensor([2])], DEVICE)


def test_reference_dropout_rng_state_round_trip():
    drop = ColumnDropout(reference.dropout, 0.5, seed=3, columns=(0, 1))
    x = torch.randn(4, 64) + 3.0
    state = drop.get_rng_state("cpu")
    first = drop(x)
    assert not torch.equal(first, drop(x))  # the streams move on
    drop.set_rng_state(state, "cpu")
    assert torch.equal(first, drop(x))


def test_config_errors():
    with pytest.raises(ValueError, match="activation"):
        AlexNetConfig(activation="sigmoid")
    with pytest.raises(ValueError, match="too small"):
        AlexNetConfig(image_size=31)
    with pytest.raises(ValueError, match="columns"):
        AlexNetConfig(columns=4)
    with pytest.raises(ValueError, match="columns=2"):
        AlexNet(replace(SMALL, columns=1), column=0)


@pytest.mark.skipif(CUDA, reason="checks the CPU default")
def test_auto_ops_on_cpu_is_reference():
    config = AlexNetConfig().resolved()
    assert config.ops == "reference" and config.channels_last is False


@requires_gpu
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_triton_model_matches_reference_on_gpu(channels_last, monkeypatch):
    """One state dict in both builds; fp32 without tf32 on the GPU against float64 on the CPU."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    ref = AlexNet(PAPER).double().eval()
    ours = AlexNet(replace(PAPER, ops="triton", channels_last=channels_last)).cuda().eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 224, 224, dtype=torch.float64)
    y = torch.randint(0, 1000, (4,))
    expected = ref(x)
    F.cross_entropy(expected, y).backward()
    logits = ours(x.float().cuda())
    F.cross_entropy(logits, y.cuda()).backward()
    assert_close_verbose(logits.double().cpu(), expected.detach(), rtol=1e-4, atol=1e-4 * expected.abs().max().item(),
                         check_dtype=True, reason="fp32 network (no tf32) against float64, relative to the top logit")
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert_close_verbose(p.grad.double().cpu(), q.grad, rtol=1e-3, atol=1e-4 * q.grad.abs().max().item(),
                             check_dtype=True, reason=f"{name}: fp32 gradient against float64, relative to its largest")
