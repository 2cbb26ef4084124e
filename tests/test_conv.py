"""conv2d and conv_transpose2d against torch in float64: forward, and the gradient
of input, weight and bias under a random upstream gradient (a plain .sum() would
hide a transposed or flipped kernel), over a grid of strides, paddings,
dilations, kernel shapes, batch sizes and groups; plus gradcheck, the first-layer
shortcut, bad input, and the Conv2d / ConvTranspose2d layers (torch's
initialisation, and torch state dicts that load)."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl as md
import minidl.conv as C
from minidl import kernels, threads
from minidl.gradcheck import gradcheck
from minidl.nn.conv import Conv2d, ConvTranspose2d

RTOL, ATOL = 1e-10, 1e-12


def _compare(md_fn, torch_fn, arrays, needs=None, seed=0):
    """Run both engines on the same float64 arrays; compare outputs and gradients."""
    needs = needs or [True] * len(arrays)
    md_in = [None if a is None else md.Tensor(a, requires_grad=n) for a, n in zip(arrays, needs)]
    th_in = [None if a is None else torch.tensor(a, requires_grad=n) for a, n in zip(arrays, needs)]
    md_out, th_out = md_fn(*md_in), torch_fn(*th_in)
    assert md_out.shape == tuple(th_out.shape)
    np.testing.assert_allclose(md_out.data, th_out.detach().numpy(), rtol=RTOL, atol=ATOL)
    upstream = np.random.default_rng(seed).standard_normal(md_out.shape)
    md_out.backward(upstream)
    th_out.backward(torch.from_numpy(upstream))
    for m, t, n in zip(md_in, th_in, needs):
        if m is None:
            continue
        if not n:
            assert m.grad is None
            continue
        assert m.grad.shape == m.shape
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------- conv2d grid

KERNELS = [1, 3, 5, (2, 3)]
GRID = list(itertools.product([1, 2], [0, 1, 2], [1, 2], KERNELS))


@pytest.mark.parametrize("stride,padding,dilation,kernel", GRID,
                         ids=[f"s{s}-p{p}-d{d}-k{k}" for s, p, d, k in GRID])
def test_conv2d_matches_torch(stride, padding, dilation, kernel):
    rng = np.random.default_rng(hash((stride, padding, dilation, str(kernel))) % 2**32)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    # Vary batch (1 or 3) and groups (1 or 2) across the grid; odd image sizes.
    batch = 1 if (stride + padding) % 2 else 3
    groups = 2 if dilation == 2 else 1
    x = rng.standard_normal((batch, 4, 11, 10))
    w = rng.standard_normal((6, 4 // groups, kh, kw))
    b = rng.standard_normal(6)
    kw_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    _compare(lambda x, w, b: C.conv2d(x, w, b, **kw_args),
             lambda x, w, b: TF.conv2d(x, w, b, **kw_args), [x, w, b])


@pytest.mark.parametrize("case", [
    dict(stride=(1, 2), padding=(2, 0), dilation=(1, 2)),   # every option per axis
    dict(groups=3),                                          # depthwise-like
    dict(padding="same", dilation=2),
    dict(padding="valid", stride=3),
])
def test_conv2d_options_match_torch(case):
    rng = np.random.default_rng(1)
    groups = case.get("groups", 1)
    x = rng.standard_normal((2, 6, 9, 7))
    w = rng.standard_normal((6, 6 // groups, 3, 3))
    _compare(lambda x, w: C.conv2d(x, w, **case), lambda x, w: TF.conv2d(x, w, **case), [x, w])


@pytest.mark.parametrize("hw,kernel,padding", [((1, 1), 3, 1), ((2, 1), 3, 2), ((1, 3), 5, 2),
                                                ((3, 2), (3, 1), (2, 0))])
def test_conv2d_tiny_images_with_large_padding(hw, kernel, padding):
    """Kernel columns that fall entirely into the padding, for every row."""
    rng = np.random.default_rng(14)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, w = rng.standard_normal((2, 3) + hw), rng.standard_normal((4, 3, kh, kw))
    _compare(lambda x, w: C.conv2d(x, w, padding=padding),
             lambda x, w: TF.conv2d(x, w, padding=padding), [x, w])
    w_t = rng.standard_normal((3, 4, kh, kw))  # transposed layout (in, out, kh, kw)
    _compare(lambda x, w: C.conv_transpose2d(x, w), lambda x, w: TF.conv_transpose2d(x, w),
             [x, w_t])


def test_conv2d_non_contiguous_input_and_unbatched():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 3, 2, 6)).transpose(2, 1, 3, 0)  # (2, 3, 6, 7), strided
    w = rng.standard_normal((4, 3, 3, 3))
    _compare(lambda x, w: C.conv2d(x, w, padding=1), lambda x, w: TF.conv2d(x, w, padding=1),
             [x, w])
    single = rng.standard_normal((3, 6, 5))  # one image (C, H, W), as torch accepts
    _compare(lambda x, w: C.conv2d(x, w, stride=2), lambda x, w: TF.conv2d(x, w, stride=2),
             [single, w])


def test_conv2d_float32_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 12, 12), dtype=np.float32)
    w = rng.standard_normal((16, 8, 3, 3), dtype=np.float32)
    out = C.conv2d(md.Tensor(x), md.Tensor(w), padding=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, TF.conv2d(torch.tensor(x), torch.tensor(w), padding=1),
                               rtol=1e-4, atol=1e-4)


def test_first_layer_computes_no_input_gradient(monkeypatch):
    """An image batch that needs no gradient: no grad_cols GEMM, no col2im."""
    def forbidden(*args):
        raise AssertionError("col2im ran although nobody needs the input gradient")
    monkeypatch.setattr(kernels, "col2im", forbidden)
    rng = np.random.default_rng(4)
    _compare(lambda x, w, b: C.conv2d(x, w, b, padding=1),
             lambda x, w, b: TF.conv2d(x, w, b, padding=1),
             [rng.standard_normal((2, 1, 8, 8)), rng.standard_normal((5, 1, 3, 3)),
              rng.standard_normal(5)], needs=[False, True, True])


def test_conv2d_weight_only_and_input_only_gradients():
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    for needs in ([True, False], [False, True]):
        _compare(lambda x, w: C.conv2d(x, w, stride=2, padding=1),
                 lambda x, w: TF.conv2d(x, w, stride=2, padding=1), [x, w], needs=needs)


@pytest.mark.parametrize("case", [dict(stride=1, padding=1), dict(stride=2, dilation=2, groups=2)])
def test_conv2d_gradcheck(case):
    rng = np.random.default_rng(6)
    x = md.Tensor(rng.standard_normal((2, 4, 6, 5)), requires_grad=True)
    w = md.Tensor(rng.standard_normal((4, 4 // case.get("groups", 1), 3, 2)), requires_grad=True)
    b = md.Tensor(rng.standard_normal(4), requires_grad=True)
    assert gradcheck(lambda x, w, b: C.conv2d(x, w, b, **case), [x, w, b])


# ------------------------------------------------------------- conv_transpose2d

TGRID = [  # (stride, padding, output_padding, dilation, groups, kernel)
    (1, 0, 0, 1, 1, 3), (2, 1, 1, 1, 1, 3), (2, 0, 0, 1, 2, 2), (3, 1, 2, 1, 1, (3, 2)),
    (2, 2, 1, 2, 1, 3), (1, 1, 0, 2, 2, 5), ((2, 1), (0, 1), (1, 0), 1, 1, 4),
]


@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups,kernel", TGRID)
def test_conv_transpose2d_matches_torch(stride, padding, output_padding, dilation, groups, kernel):
    rng = np.random.default_rng(7)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((3, 4, 5, 6))
    w = rng.standard_normal((4, 6 // groups, kh, kw))
    b = rng.standard_normal(6)
    kw_args = dict(stride=stride, padding=padding, output_padding=output_padding,
                   dilation=dilation, groups=groups)
    _compare(lambda x, w, b: C.conv_transpose2d(x, w, b, **kw_args),
             lambda x, w, b: TF.conv_transpose2d(x, w, b, **kw_args), [x, w, b])


def test_conv_transpose2d_gradcheck_and_unbatched():
    rng = np.random.default_rng(8)
    x = md.Tensor(rng.standard_normal((2, 3, 4, 3)), requires_grad=True)
    w = md.Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    b = md.Tensor(rng.standard_normal(2), requires_grad=True)
    assert gradcheck(lambda x, w, b: C.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                        output_padding=1), [x, w, b])
    _compare(lambda x, w: C.conv_transpose2d(x, w, stride=2),
             lambda x, w: TF.conv_transpose2d(x, w, stride=2),
             [rng.standard_normal((3, 4, 4)), rng.standard_normal((3, 2, 3, 3))])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("x_shape,w_shape,kw_args,words", [
    ((2, 3, 8, 8), (4, 2, 3, 3), {}, ["(2, 3, 8, 8)", "3 channels", "(4, 2, 3, 3)"]),
    ((2, 4, 8, 8), (4, 2, 3, 3), dict(groups=3), ["groups=3"]),
    ((2, 3, 4, 4), (4, 3, 7, 3), dict(padding=1), ["larger than the padded input", "(2, 3, 4, 4)"]),
    ((2, 3, 4, 4), (4, 3, 3, 3), dict(dilation=3), ["larger than the padded input"]),
    ((3, 8, 8), (4, 3, 3, 3), {}, []),  # unbatched: fine
    ((8, 8), (4, 3, 3, 3), {}, ["(8, 8)", "2 dimensions"]),
    ((1, 2, 3, 8, 8), (4, 3, 3, 3), {}, ["(1, 2, 3, 8, 8)"]),
    ((2, 3, 8, 8), (4, 3, 3), {}, ["(4, 3, 3)"]),
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(stride=0), ["stride"]),
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(padding=-1), ["padding"]),
    ((2, 3, 8, 8), (4, 3, 4, 4), dict(padding="same"), ["even kernel"]),
])
def test_conv2d_bad_input_raises_value_error_with_shapes(x_shape, w_shape, kw_args, words):
    x, w = md.Tensor(np.zeros(x_shape)), md.Tensor(np.zeros(w_shape))
    if not words:
        C.conv2d(x, w, **kw_args)
        return
    with pytest.raises(ValueError) as info:
        C.conv2d(x, w, **kw_args)
    for word in words:
        assert word in str(info.value)


def test_conv_bad_bias_dtype_and_transpose_checks():
    x, w = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        C.conv2d(x, w, np.zeros(3))
    with pytest.raises(ValueError, match="dtype"):
        C.conv2d(x.astype(np.float32), w)
    with pytest.raises(ValueError, match="floating"):
        C.conv2d(np.zeros((2, 3, 5, 5), dtype=np.int64), w)
    with pytest.raises(ValueError, match=r"3 channels.*\(4, 2, 3, 3\)"):
        C.conv_transpose2d(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="output_padding"):
        C.conv_transpose2d(x, np.zeros((3, 2, 3, 3)), stride=2, output_padding=2)


# --------------------------------------------------------------------- layers


def _load_torch_into_minidl(th_layer, md_layer):
    md_layer.load_state_dict({k: v.numpy() for k, v in th_layer.state_dict().items()})


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_layer_names_shapes_and_torch_state_dict(bias):
    torch.manual_seed(0)
    th = torch.nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2,
                         bias=bias).double()
    layer = Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), groups=2, bias=bias, dtype=np.float64)
    assert list(layer.state_dict()) == list(th.state_dict())
    assert layer.weight.shape == tuple(th.weight.shape) == (6, 2, 3, 5)
    _load_torch_into_minidl(th, layer)
    x = np.random.default_rng(9).standard_normal((2, 4, 9, 8))
    np.testing.assert_allclose(layer(md.Tensor(x)).data, th(torch.tensor(x)).detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    # and back: minidl's state dict loads into torch
    th2 = torch.nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), groups=2, bias=bias).double()
    th2.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in layer.state_dict().items()})
    assert torch.equal(th2.weight, th.weight)


def test_conv_transpose2d_layer_and_torch_state_dict():
    torch.manual_seed(1)
    th = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2).double()
    layer = ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2,
                            dtype=np.float64)
    assert layer.weight.shape == tuple(th.weight.shape) == (4, 3, 3, 3)
    assert list(layer.state_dict()) == list(th.state_dict())
    _load_torch_into_minidl(th, layer)
    x = np.random.default_rng(10).standard_normal((2, 4, 5, 4))
    np.testing.assert_allclose(layer(md.Tensor(x)).data, th(torch.tensor(x)).detach().numpy(),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("make,fan_in", [
    (lambda: Conv2d(8, 16, 3), 8 * 9),
    (lambda: Conv2d(8, 16, (1, 5), groups=4), 2 * 5),
    (lambda: ConvTranspose2d(8, 16, 3, groups=2), 8 * 9),  # torch: weight.shape[1] * kh * kw
])
def test_default_initialisation_is_torchs(make, fan_in):
    """kaiming_uniform_(a=√5) gives U(-1/√fan_in, 1/√fan_in), the bias the same bound."""
    md.manual_seed(0)
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    for p in (layer.weight.data, layer.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.8 * bound  # the full range is used, not a narrower one
    w = layer.weight.data.ravel()
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound  # the std of U(-b, b)


def test_layer_repr_and_bad_arguments():
    assert "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))" in repr(
        md.nn.Sequential(Conv2d(3, 8, 3, stride=2, padding=1)))
    with pytest.raises(ValueError, match="groups"):
        Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        Conv2d(3, 8, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="4 channels"):
        Conv2d(3, 8, 3)(md.Tensor(np.zeros((1, 4, 5, 5), dtype=np.float32)))


def test_scratch_buffers_are_not_shared_between_live_nodes():
    """Two convolutions of the same shape in one graph, backward twice with
    retain_graph: each node keeps its own column matrix until it is released."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 16, 12, 12))  # columns of 1.2 MB: large enough for the pool
    w1, w2 = rng.standard_normal((2, 8, 16, 3, 3))
    md_in = [md.Tensor(a, requires_grad=True) for a in (x, w1, w2)]
    th_in = [torch.tensor(a, requires_grad=True) for a in (x, w1, w2)]
    for (xx, a, b), lib in ((md_in, C), (th_in, TF)):
        out = (lib.conv2d(xx, a, padding=1) * lib.conv2d(xx, b, padding=1)).sum()
        out.backward(retain_graph=True)
        out.backward()
    for m, t in zip(md_in, th_in):
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("needs", [[True, True, True], [False, True, True], [True, False, False]],
                         ids=["all", "first-layer", "input-only"])
def test_conv2d_in_chunks_of_images(monkeypatch, needs):
    """A batch larger than one chunk: columns recomputed in backward, the weight
    and bias gradients summed over chunks (here 2 images per chunk, 5 images)."""
    per_image = (6 * 3 * 3) * (9 * 10) * 8  # column rows * output pixels * bytes
    monkeypatch.setattr(C, "CHUNK_BYTES", 2 * per_image)
    rng = np.random.default_rng(12)
    x, w, b = rng.standard_normal((5, 6, 9, 10)), rng.standard_normal((4, 3, 3, 3)), \
        rng.standard_normal(4)
    _compare(lambda x, w, b: C.conv2d(x, w, b, padding=1, groups=2),
             lambda x, w, b: TF.conv2d(x, w, b, padding=1, groups=2), [x, w, b], needs=needs)


# ------------------------------------------------------------ thread guard


def test_threaded_chunks_agree_with_one_thread_and_blas_is_restored():
    rng = np.random.default_rng(13)
    x, w, b = rng.standard_normal((6, 4, 9, 8)), rng.standard_normal((6, 4, 3, 3)), \
        rng.standard_normal(6)
    blas_before = threads._blas_control().threads()
    results = []
    before = threads.num_threads()
    try:
        for count in (1, 3):
            threads.set_num_threads(count)
            inputs = [md.Tensor(a, requires_grad=True) for a in (x, w, b)]
            out = C.conv2d(*inputs, padding=1)
            out.backward(np.cos(out.data))
            results.append([out.data] + [t.grad for t in inputs])
    finally:
        threads.set_num_threads(before)
    for one, many in zip(*results):
        np.testing.assert_allclose(one, many, rtol=1e-12, atol=1e-12)
    assert threads._blas_control().threads() == blas_before


def test_parallel_for_runs_every_task_once_and_reraises():
    before = threads.num_threads()
    threads.set_num_threads(3)
    try:
        seen = []
        threads.parallel_for(10, lambda worker, i: seen.append((worker, i)))
        assert sorted(i for _, i in seen) == list(range(10))
        assert {worker for worker, _ in seen} <= {0, 1, 2}

        def failing(worker, i):
            if i == 7:
                raise RuntimeError("task 7 failed")
        with pytest.raises(RuntimeError, match="task 7"):
            threads.parallel_for(10, failing)
        nested = []
        threads.parallel_for(4, lambda w, i: threads.parallel_for(2, lambda v, j: nested.append(j)))
        assert sorted(nested) == [0] * 4 + [1] * 4
    finally:
        threads.set_num_threads(before)
    with pytest.raises(ValueError):
        threads.set_num_threads(0)


def test_matmul_gives_small_products_one_blas_thread_and_restores_it():
    """threads.matmul equals numpy's product, small or large, and leaves BLAS's
    thread count as it found it; a product below SMALL_MATMUL sees one thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(5)
    blas = threads._blas_control()
    seen = []
    original = blas.single_threaded

    def spy():  # a real call, recorded: which thread count BLAS has inside the product
        previous = original()
        seen.append({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        return previous
    running = threads.num_threads()
    threads.set_num_threads(2)  # on one thread minidl leaves BLAS alone: there is no pool to quiet
    with threadpool_limits(limits=2, user_api="blas"):  # two threads, so there is a switch to undo
        before = blas.threads()
        for shape in ((64, 1568, 10), (512, 1024, 16)):
            m, k, n = shape
            a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
            np.testing.assert_allclose(threads.matmul(a, b), a @ b, rtol=1e-12)
            assert (m * k * n < threads.SMALL_MATMUL) == (shape == (64, 1568, 10))
        assert blas.threads() == before
        blas.single_threaded = spy
        try:
            threads.matmul(np.ones((4, 3)), np.ones((3, 2)))
        finally:
            del blas.single_threaded
        assert blas.threads() == before
    threads.set_num_threads(running)
    assert seen == [{1}] or not blas.libs
