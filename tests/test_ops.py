"""The alexnet_triton custom ops (kernels/ops.py): PyTorch's own op checks, the dispatch rule,
the CPU reference implementations' gradients, and the model under torch.compile and torch.export.

Two implementations run on this machine's tensors: "kernel" (the Triton kernel: CUDA, or the
CPU through the interpreter) and "reference" (CPU tensors with TRITON_INTERPRET unset: the
plain-PyTorch implementation registered for the CPU).
"""
from dataclasses import replace

import pytest
import torch
from compare import assert_close_verbose
from functorch.compile import make_boxed_func
from helpers import DEVICE, MEMORY_FORMATS, TINY_CROP, requires_gpu
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend
from torch.library import opcheck

import kernels
from alexnet.network.config import AlexNetConfig
from alexnet.network.layers import ColumnDropout, Linear
from alexnet.network.model import AlexNet
from alexnet.train import TrainConfig
from alexnet.training import checkpoint
from alexnet.training.loop import run
from kernels import reference
from kernels.runtime import state

ops = torch.ops.alexnet_triton


@pytest.fixture(params=["kernel", "reference"])
def device(request, monkeypatch):
    """The device whose implementation a test exercises (see the module docstring)."""
    if request.param == "reference":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        return "cpu"
    return DEVICE


def _x(shape, device, fmt=torch.contiguous_format, dtype=torch.float32, grad=True):
    """Random inputs away from zero (ReLU kinks) and without ties (pooling)."""
    x = torch.randn(shape, dtype=dtype)
    x = (x + x.sign() * 0.1).to(device).contiguous(memory_format=fmt)
    return x.requires_grad_(grad)


def _t(*a, device, grad=False):
    return tuple(_x(s, device, grad=grad) for s in a)


# conv: (x shape, weight shape, stride, padding, groups, relu): odd sizes, batch 1, grouped, strided
CONVS = [((2, 4, 5, 7), (6, 2, 3, 3), (1, 1), (1, 1), 2, True), ((1, 3, 9, 8), (4, 3, 3, 5), (2, 3), (0, 2), 1, False)]


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("xs, ws, stride, padding, groups, relu", CONVS)
def test_opcheck_conv2d_and_its_backward_ops(device, fmt, xs, ws, stride, padding, groups, relu):
    """Forward with bias and fused ReLU / without either; the backward ops with and without the
    ReLU mask (y) they take from a fused-ReLU forward."""
    x, w = _x(xs, device, fmt), _x(ws, device, fmt)
    b = _x(ws[:1], device) if relu else None
    opcheck(ops.conv2d.default, (x, w, b, stride, padding, groups, relu))
    y = ops.conv2d(x, w, b, stride, padding, groups, relu).detach()
    dy, mask = _x(y.shape, device, fmt, grad=False), (y if relu else None)
    opcheck(ops.conv2d_input_grad.default,
            (dy, w.detach(), mask, list(xs), stride, padding, groups, fmt == torch.channels_last))
    for wanted in ((True, True), (False, True)) if relu else ((True, False),):  # both gradients; one of them
        opcheck(ops.conv2d_weight_grad.default, (dy, x.detach(), w.detach(), mask, stride, padding, groups, *wanted))
    if relu:  # the fused ReLU's gradient mask the conv's backward applies once for both GEMMs
        opcheck(ops.relu_grad.default, (dy, y))


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("shape, groups, relu_saves_u", [((2, 8, 3, 5), 2, True), ((1, 5, 4, 1), 1, False)])
def test_opcheck_lrn(device, fmt, shape, groups, relu_saves_u):
    """Both ops, each with and without u (training / inference forward), and the backward op."""
    x = _x(shape, device, fmt)
    opcheck(ops.relu_lrn.default, (x, 5, 1e-2, 0.75, 2.0, groups, relu_saves_u))
    opcheck(ops.local_response_norm.default, (x, 3, 1e-2, 0.75, 2.0, groups, not relu_saves_u))
    u = ops.relu_lrn(x, 5, 1e-2, 0.75, 2.0, groups, True)[1].detach()
    opcheck(ops.lrn_backward.default, (_x(shape, device, fmt, grad=False), x.detach(), u, 5, 1e-2, 0.75, 2.0,
                                       True, groups))


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
def test_opcheck_relu_mask_flags(device, fmt):
    """The flags that move a ReLU's gradient mask (conv3 -> conv4 -> conv5 -> pool5): the conv
    with input_relu and dy_masked, the dgrad op with relu_input, the pool and its backward
    with input_relu / relu_out; inputs are ReLU outputs, as the model passes them."""
    x = torch.relu(_x((2, 4, 5, 7), device, fmt)).detach().requires_grad_()
    w, b = _x((6, 2, 3, 3), device, fmt), _x((6,), device)
    opcheck(ops.conv2d.default, (x, w, b, (1, 1), (1, 1), 2, True, True, True))
    y = ops.conv2d(x, w, b, (1, 1), (1, 1), 2, True, True, True).detach()
    dy = _x(y.shape, device, fmt, grad=False)
    opcheck(ops.conv2d_input_grad.default,
            (dy, w.detach(), None, list(x.shape), (1, 1), (1, 1), 2, fmt == torch.channels_last, x.detach()))
    yg = y.clone().requires_grad_()
    opcheck(ops.max_pool2d.default, (yg, (2, 3), (2, 1), True))
    p, idx = ops.max_pool2d(y, (2, 3), (2, 1), True)
    opcheck(ops.max_pool2d_backward.default, (_x(p.shape, device, fmt, grad=False), idx, list(y.shape),
                                              fmt == torch.channels_last, (2, 3), (2, 1), p))


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("shape, kernel, stride", [((2, 3, 7, 6), (3, 3), (2, 2)), ((1, 5, 4, 5), (2, 3), (2, 1))])
def test_opcheck_max_pool2d(device, fmt, shape, kernel, stride):
    x = _x(shape, device, fmt)
    opcheck(ops.max_pool2d.default, (x, kernel, stride))
    y, idx = ops.max_pool2d(x, kernel, stride)
    opcheck(ops.max_pool2d_backward.default, (_x(y.shape, device, fmt, grad=False), idx, list(shape),
                                              fmt == torch.channels_last, kernel, stride))


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
def test_opcheck_dropout(device, fmt):
    for shape in ((2, 3, 4, 5), (7, 33)):
        x = _x(shape, device, fmt if len(shape) == 4 else torch.contiguous_format)
        opcheck(ops.dropout.default, (x, torch.tensor([12345], device=device), 0.5))


@pytest.mark.parametrize("shape, seeds, call", [((3, 2 * 20), [7, 2**40 + 1], 0), ((1, 33), [12345], 2**32 + 5)])
def test_opcheck_column_dropout(device, shape, seeds, call):
    """The forward (y, next_call) and the backward op (its own autograd formula); batch 1 and
    a call index past 32 bits among the shapes."""
    seeds, call = torch.tensor(seeds, device=device), torch.tensor([call], device=device)
    x = _x(shape, device)
    opcheck(ops.column_dropout.default, (x, seeds, call, 0.5))
    next_call = ops.column_dropout(x, seeds, call, 0.5)[1]
    opcheck(ops.column_dropout_backward.default, (_x(shape, device), seeds, next_call, 0.25))
    # the fc layers' ReLU fused in: forward relu=True, backward with the ReLU's input
    signed = _x(shape, device) - 0.5
    opcheck(ops.column_dropout.default, (signed, seeds, call, 0.5, True))
    opcheck(ops.column_dropout_backward.default, (_x(shape, device), seeds, next_call, 0.25, signed))


def _augment_inputs(device, seed):
    """(images, offsets, flips, shift, mean): two 9x11 images, crops of 7 at (0, 3) and (2, 1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 9, 11, 3), dtype=torch.uint8, generator=g).to(device)
    offsets = torch.tensor([[0, 3], [2, 1]], dtype=torch.int32, device=device)
    flips = torch.tensor([True, False], device=device)
    return (images, offsets, flips, *_t((2, 3), (9, 11, 3), device=device))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck_augment(device, channels_last):
    opcheck(ops.augment.default, (*_augment_inputs(device, 0), 7, torch.float32, channels_last))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=requires_gpu)])
def test_opcheck_augment_padded(device, dtype):
    """conv1's padded input written by the augmentation: crop at (2, 1) in a 4-channel 12x10 buffer."""
    opcheck(ops.augment_padded.default, (*_augment_inputs(device, 1), 7, dtype, [2, 1], [12, 10], 4))


def test_opcheck_sgd_step(device):
    n = 37
    w, v, g = _t((n,), (n,), (n,), device=device)
    lr = torch.tensor([0.01], device=device)
    opcheck(ops.sgd_step_.default, (w, v, g, lr, 0.9, 5e-4, 20, None))
    opcheck(ops.sgd_step_.default, (w, v, g, lr, 0.9, 5e-4, n, torch.empty(n, dtype=torch.float16, device=device)))


# Compiled/exported graphs call the same ops on the same inputs in the same order: bit-equal.
SAME_OPS = "the same ops on the same inputs, in the same order: bit-equal"


# ---------------------------------------------------------------------- dispatch by device
def test_cpu_tensors_run_the_reference_without_the_interpreter(monkeypatch):
    """The op-selection rule: CPU tensors take the PyTorch reference unless TRITON_INTERPRET=1
    (with it, the public functions reach the Triton launchers: their CPU-only error shows)."""
    x = _x((2, 8, 5, 5), "cpu", grad=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    same = "the op without the interpreter is the reference itself: the same computation"
    assert_close_verbose(kernels.relu_lrn(x), reference.relu_lrn(x), rtol=0, atol=0, check_dtype=True, reason=same)
    assert_close_verbose(kernels.max_pool2d(x), reference.max_pool2d(x), rtol=0, atol=0, check_dtype=True,
                         reason=same)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="size must be an int in 1..17"):  # the Triton launcher's own check
        kernels.relu_lrn(x, size=19)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.relu_lrn(x, size=19).shape == x.shape  # the reference takes any window


def test_public_functions_refuse_devices_without_an_implementation():
    with pytest.raises(ValueError, match="is on meta"):
        kernels.conv2d(torch.empty(1, 3, 5, 5, device="meta"), torch.empty(2, 3, 3, 3, device="meta"))


# ---------------------------------------------------------------- the eager fast path
def _run_both_paths(monkeypatch, fn, inputs):
    """fn's outputs and the inputs' gradients, through the fast path and through the custom ops."""
    results = []
    for fast in (True, False):
        monkeypatch.setattr(state.SWITCHES, "fast_path", fast)
        leaves = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.device))
        results.append((out.detach(), [t.grad for t in leaves], type(out.grad_fn).__name__))
    return results


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
def test_fast_path_equals_the_custom_ops(device, monkeypatch, fmt):
    """kernels.* outside compile/export skip torch.library's dispatch (ops.call) but run the same
    implementation with the op's own backward: the same outputs, strides and gradients, bit for bit."""
    x, w, b = _x((2, 4, 7, 6), device, fmt), _x((6, 2, 3, 3), device, fmt), _x((6,), device)
    x3, w3, b3 = _x((2, 3, 9, 10), device, fmt, grad=False), _x((5, 3, 3, 5), device, fmt), _x((5,), device)
    x2, seeds = _x((3, 8), device), torch.tensor([11, 12], device=device)
    call = torch.tensor([4], device=device)
    cases = {
        "conv2d": (lambda x, w, b: kernels.conv2d(x, w, b, (1, 2), 1, 2, relu=True), (x, w, b)),
        "conv2d_no_relu": (lambda x, w: kernels.conv2d(x, w, None, 2, 0, groups=2), (x, w)),
        "relu_lrn": (lambda x: kernels.relu_lrn(x, 3, 0.5, 0.75, 2.0, groups=2), (x,)),
        "local_response_norm": (lambda x: kernels.local_response_norm(x, 5, 0.5, 0.75, 2.0), (x,)),
        "max_pool2d": (lambda x: kernels.max_pool2d(x, (3, 2), (2, 1)), (x,)),
        # few channels (conv1's case): the padded image, kept from the fast forward for wgrad
        "conv2d_padded_image": (lambda w, b: kernels.conv2d(x3, w, b, (2, 4), 2), (w3, b3)),
        "column_dropout": (lambda x: kernels.column_dropout(x, seeds, call, 0.5)[0], (x2,)),
    }
    for name, (fn, inputs) in cases.items():
        (fast, fast_grads, fast_node), (op, op_grads, op_node) = _run_both_paths(monkeypatch, fn, inputs)
        assert fast_node.endswith("_eagerBackward") and not op_node.endswith("_eagerBackward"), (fast_node, op_node)
        assert fast.stride() == op.stride(), name
        assert_close_verbose(fast, op, rtol=0, atol=0, check_dtype=True, reason=f"{name}: {SAME_IMPL}")
        for g_fast, g_op in zip(fast_grads, op_grads, strict=True):
            assert g_fast.stride() == g_op.stride(), name
            assert_close_verbose(g_fast, g_op, rtol=0, atol=0, check_dtype=True, reason=f"{name}: {SAME_IMPL}")


SAME_IMPL = "both paths run the same implementation on the same inputs"


def test_fast_path_keeps_conv1s_padded_image_for_its_weight_gradient(monkeypatch):
    """The fast forward of a few-channel conv keeps the padded image it built, and the weight
    gradient reads that one (taking it) instead of padding the image again."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(state.SWITCHES, "fast_path", True)
    x, w = _x((2, 3, 9, 10), "cpu", torch.channels_last, grad=False), _x((4, 3, 3, 5), "cpu", torch.channels_last)
    pads = []
    monkeypatch.setattr(kernels.conv, "pad_input", lambda *a, real=kernels.conv.pad_input: pads.append(1) or real(*a))
    y = kernels.conv2d(x, w, None, (2, 4), 2)
    assert len(kernels.conv.op._PADDED_INPUTS) == 1 and len(pads) == 1
    y.sum().backward()
    assert not kernels.conv.op._PADDED_INPUTS and len(pads) == 1  # taken, not built again
    ref = reference.conv2d(x.double(), w.detach().double(), None, (2, 4), (2, 2), 1, False)
    assert_close_verbose(y.double(), ref, rtol=1e-4, atol=1e-4, reason="the padded image is the image")


def test_fast_path_steps_aside_for_tracing_and_fake_tensors(monkeypatch):
    """Under a dispatch mode (make_fx tracing, FakeTensorMode) the public functions call the
    custom op, so the graph holds the op; without one they skip it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _x((1, 4, 7, 7), "cpu", grad=False)
    graph = make_fx(lambda x: kernels.max_pool2d(kernels.relu_lrn(x)))(x)
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert "alexnet_triton.relu_lrn.default" in targets and "alexnet_triton.max_pool2d.default" in targets
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert kernels.relu_lrn(fake).shape == x.shape
    calls = []
    spy = type("Spy", (), {"__getattr__": lambda self, n: calls.append(n)})()
    monkeypatch.setattr(kernels.runtime.dispatch, "ops", spy)
    kernels.relu_lrn(x.requires_grad_())  # eager: no custom-op call at all
    assert calls == []


# ------------------------------------------------ CPU reference implementations: gradients
@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
def test_reference_backward_ops_are_the_gradients(monkeypatch, fmt):
    """gradcheck (float64, finite differences) of every op's registered backward on the CPU
    reference path; the Triton backward kernels are checked against the references in their
    own test files."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _x((2, 4, 5, 4), "cpu", fmt, torch.float64)
    w, b = _x((6, 2, 3, 3), "cpu", fmt, torch.float64), _x((6,), "cpu", dtype=torch.float64)
    checks = {
        "conv2d": (lambda x, w, b: ops.conv2d(x, w, b, (1, 2), (1, 1), 2, True), (x, w, b)),
        "relu_lrn": (lambda x: ops.relu_lrn(x, 3, 0.5, 0.75, 2.0, 2, True)[0], (x,)),
        "local_response_norm": (lambda x: ops.local_response_norm(x, 5, 0.5, 0.75, 2.0, 1, False)[0], (x,)),
        "max_pool2d": (lambda x: ops.max_pool2d(x, (3, 2), (2, 1))[0], (x,)),
        "dropout": (lambda x: ops.dropout(x, torch.tensor([5]), 0.5), (x,)),
        "column_dropout": (lambda x: ops.column_dropout(x, torch.tensor([5, 6]), torch.tensor([3]), 0.5)[0],
                           (x.detach().flatten(1).requires_grad_(),)),
    }
    for name, (fn, inputs) in checks.items():
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True), name


# ---------------------------------------------------------------- torch.compile, export
SMALL = AlexNetConfig(ops="triton", channels_last=False, dropout_seed=7, image_size=63)


def _models(config):
    torch.manual_seed(0)
    model = AlexNet(config)
    return model, torch.randn(2, 3, config.image_size, config.image_size)


class GraphRecorder:
    """A torch.compile backend (AOT autograd, eager execution) that keeps the call_function
    targets of every forward and backward graph it is given."""

    def __init__(self):
        self.forward, self.backward = [], []
        self.backend = aot_autograd(fw_compiler=self._keep(self.forward), bw_compiler=self._keep(self.backward))

    @staticmethod
    def _keep(graphs):
        def compiler(gm, example_inputs):
            graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
            return make_boxed_func(gm.forward)
        return compiler


def _train_twice(model, x):
    """Two training forwards (fc6, fc7 dropout each: call counts 0-3), the second's backward:
    (outputs, gradients, the dropout state after)."""
    model.zero_grad()
    outputs = [model(x) for _ in range(2)]
    outputs[1].logsumexp(1).sum().backward()
    return outputs, [p.grad.clone() for p in model.parameters()], model.dropout.get_rng_state("cpu")


@pytest.mark.parametrize("channels_last", [pytest.param(False, marks=pytest.mark.slow), True], ids=["nchw", "nhwc"])
def test_compiled_model_has_one_graph_and_equals_eager(monkeypatch, channels_last):
    """torch.compile(fullgraph=True) of the paper's network (63 px, CPU reference
    implementations: the interpreter would take minutes), in eval mode and in training with
    dropout on, the custom ops inside the graphs (column dropout's forward and backward ops
    too); outputs, gradients and the dropout call count equal the eager model's from the same
    dropout state, and a second call reuses the graph (the new count is a graph output)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model, x = _models(replace(SMALL, channels_last=channels_last))
    seen = []

    def backend(gm, example_inputs):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm

    compiled = torch.compile(model.eval(), fullgraph=True, backend=backend)
    with torch.no_grad():
        assert_close_verbose(compiled(x), model(x), rtol=0, atol=0, check_dtype=True, reason=SAME_OPS)
    assert any("alexnet_triton.conv2d" in t for t in seen[0]) and any("alexnet_triton.relu_lrn" in t for t in seen[0])
    model.train()
    state = model.dropout.get_rng_state("cpu")
    outputs, grads, after = _train_twice(model, x)
    model.dropout.set_rng_state(state, "cpu")
    graphs = GraphRecorder()
    counter = CompileCounterWithBackend(graphs.backend)
    c_outputs, c_grads, c_after = _train_twice(torch.compile(model, fullgraph=True, backend=counter), x)
    assert counter.frame_count == 1 and [int(s) for s in c_after] == [int(s) for s in after] == [4, 4]
    for got, expected in zip(c_outputs + c_grads, outputs + grads, strict=True):
        assert_close_verbose(got, expected, rtol=0, atol=0, check_dtype=True, reason=SAME_OPS)
    assert graphs.forward[0].count("alexnet_triton.column_dropout.default") == 2
    assert graphs.backward[0].count("alexnet_triton.column_dropout_backward.default") == 2


class _DropoutNet(torch.nn.Module):
    """fc -> dropout -> fc -> dropout -> fc, the layer shared as fc6 and fc7 share it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc6, self.fc7, self.fc8 = Linear(12, 16, "relu"), Linear(16, 16, "relu"), Linear(16, 4)
        for layer in (self.fc6, self.fc7, self.fc8):
            torch.nn.init.normal_(layer.weight, 0, 0.3)
            torch.nn.init.normal_(layer.bias, 0.5, 0.1)
        self.dropout = ColumnDropout(kernels.dropout, 0.5, seed=3, columns=(0, 1),
                                     column_op=kernels.column_dropout)

    def forward(self, x):
        return self.fc8(self.dropout(self.fc7(self.dropout(self.fc6(x)))))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("pinned", [False, True], ids=["rebound", "pinned"])
def test_compiled_dropout_layer_with_the_triton_op_equals_eager(pinned, backend):
    """The Triton op (the interpreter on the CPU, CUDA on a GPU) under
    torch.compile(fullgraph=True) in training: the same masks, outputs, gradients and call
    count as eager, with the count kept by rebinding (eager's way) or pinned in one tensor
    (the CUDA-graph way: a copy into it, which the compiled graph also performs). Inductor
    also generates the code around the op (the fc layers' bias and ReLU)."""
    model = _DropoutNet().to(DEVICE).train()
    if pinned:
        model.dropout.pin()
    x = torch.randn(5, 12, device=DEVICE)
    state = model.dropout.get_rng_state(DEVICE)
    outputs, grads, after = _train_twice(model, x)
    model.dropout.set_rng_state(state, DEVICE)
    counter = CompileCounterWithBackend(backend)
    c_outputs, c_grads, c_after = _train_twice(torch.compile(model, fullgraph=True, backend=counter), x)
    assert counter.frame_count == 1 and [int(s) for s in c_after] == [int(s) for s in after] == [4, 4]
    assert not torch.equal(outputs[0], outputs[1])  # each call draws new masks
    tolerance = (0, 0, SAME_OPS) if backend == "aot_eager" else (
        1e-5, 1e-6, "Inductor's generated code around the op may round the fp32 bias and ReLU differently")
    for got, expected in zip(c_outputs + c_grads, outputs + grads, strict=True):
        assert_close_verbose(got, expected, rtol=tolerance[0], atol=tolerance[1], check_dtype=True,
                             reason=tolerance[2])


def test_compiled_dropout_layer_creates_its_state_inside_the_graph():
    """A layer never called before: its first call, inside the compiled graph, creates the
    seeds and the call count as eager's first call does (same masks, same count after)."""
    eager, fresh = _DropoutNet().to(DEVICE).train(), _DropoutNet().to(DEVICE).train()
    x = torch.randn(5, 12, device=DEVICE)
    compiled = torch.compile(fresh, fullgraph=True, backend="aot_eager")
    for _call in range(2):
        assert_close_verbose(compiled(x), eager(x), rtol=0, atol=0, check_dtype=True, reason=SAME_OPS)
    assert [int(s) for s in fresh.dropout.get_rng_state(DEVICE)] == [4, 4]


def test_compiled_dropout_op_equals_eager(device):
    x = _x((4, 64), device)
    seed = torch.tensor([99], device=device)
    eager = ops.dropout(x, seed, 0.5)
    compiled = torch.compile(lambda x, s: ops.dropout(x, s, 0.5), fullgraph=True, backend="aot_eager")
    y = compiled(x, seed)
    assert_close_verbose(y, eager, rtol=0, atol=0, check_dtype=True, reason=SAME_OPS)
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(dx != 0, eager != 0)  # the backward regenerates the mask from the seed


def test_export_of_the_model_in_eval_mode(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model, x = _models(SMALL)
    model.eval()
    program = torch.export.export(model, (x,))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("alexnet_triton.conv2d.default") == 5
    assert targets.count("alexnet_triton.max_pool2d.default") == 3
    with torch.no_grad():
        assert_close_verbose(program.module()(x), model(x), rtol=0, atol=0, check_dtype=True, reason=SAME_OPS)


@pytest.mark.slow
def test_inductor_compiles_the_model(monkeypatch):
    """The default backend (Inductor generates C++ for the CPU around the custom ops):
    about a minute of compilation on a small CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model, x = _models(replace(SMALL, dropout=0.0))
    model.eval()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert_close_verbose(compiled(x), model(x), rtol=1e-5, atol=1e-5, check_dtype=True,
                             reason="Inductor fuses and reorders the fp32 elementwise code around the ops")


@pytest.mark.slow
def test_training_with_the_ops_on_the_cpu_resumes_bit_identically(tiny_store, tmp_path, monkeypatch):
    """ops="triton" on the CPU: the model's custom ops and the flat SGD step's op run their
    reference implementations; stopping after 2 steps and resuming to 4 gives the very
    weights of a straight 4-step run, as with the plain reference ops (tests/test_train.py)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    base = TrainConfig(data=str(tiny_store), image_size=TINY_CROP, batch_size=8, epochs=1, log_every=1000,
                       ops="triton", threads=1)
    assert run(replace(base, out=str(tmp_path / "straight"), max_steps=4)) == 0
    split = replace(base, out=str(tmp_path / "split"), max_steps=2)
    assert run(split) == 0
    assert run(replace(split, max_steps=4, resume="auto")) == 0
    a, b = (checkpoint.load(tmp_path / run_ / "checkpoint_last.pt")["model"] for run_ in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
