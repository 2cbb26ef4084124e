"""Graph neural networks (reference_torch.gnn), the Planetoid loader and the gnn driver.

The layers against numbers worked out by hand (a normalised adjacency, the UvA tutorial's
GCN and GAT examples, sum/mean/max on a small graph, walks in a triangle), against each
other (message passing against the matrix form, dense and sparse) and against torch's fused
attention; renumbering the nodes renumbers the outputs. The loader refuses a pickle that
would run code, without running it, and reads the real Cora files where they are present.
"""
import collections
import json
import math
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from assignments.__main__ import main  # noqa: E402
from driver_run import assert_refused, quick_run_fixture, run_quick  # noqa: E402
from minidl.data import CorruptFileError, DatasetNotFoundError, UnsafePickleError  # noqa: E402
from minidl.data.graphs import (PLANETOID_PARTS, load_planetoid, read_planetoid_pickle,  # noqa: E402
                                stochastic_block_model)
from reference_torch import gnn  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# The UvA DL tutorial 7 example: node features arange(8) as 4 x 2, self-loops included
TUTORIAL_X = torch.arange(8, dtype=torch.float32).view(4, 2)
TUTORIAL_A = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.float32)


def random_graph(n=12, p=0.3, seed=0):
    """A symmetric 0/1 adjacency without self-loops (float64) and its edge list."""
    generator = torch.Generator().manual_seed(seed)
    upper = torch.triu((torch.rand(n, n, generator=generator) < p).double(), diagonal=1)
    adjacency = upper + upper.T
    return adjacency, gnn.edge_index_from_adjacency(adjacency)


# ------------------------------------------------------------------ layers
def test_normalized_adjacency_by_hand():
    # the path 0 - 1 - 2: A + I = [[1, 1, 0], [1, 1, 1], [0, 1, 1]], degrees 2, 3, 2
    path = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
    mean = [[1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 2, 1 / 2]]
    s = 1 / math.sqrt(6)
    symmetric = [[1 / 2, s, 0], [s, 1 / 3, s], [0, s, 1 / 2]]
    for norm, expected in (("mean", mean), ("symmetric", symmetric)):
        expected = torch.tensor(expected, dtype=torch.float64)
        torch.testing.assert_close(gnn.normalized_adjacency(path, norm), expected)
        torch.testing.assert_close(gnn.normalized_adjacency(path.to_sparse(), norm).to_dense(), expected)


@pytest.mark.parametrize("norm", gnn.NORMS)
def test_message_passing_equals_matrix_form(norm):
    adjacency, edges = random_graph()
    assert torch.equal(gnn.adjacency_from_edge_index(edges, len(adjacency)).double(), adjacency)  # and back
    x = torch.randn(len(adjacency), 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer = gnn.GCNLayer(5, 3, norm).double()
    with torch.no_grad():
        layer.bias.normal_()
    by_messages = layer(x, edges)
    torch.testing.assert_close(by_messages, layer.matrix_form(x, adjacency))
    torch.testing.assert_close(by_messages, layer.matrix_form(x, adjacency.to_sparse()))
    # and written out for one node: the sum over i and its neighbours of c_ij W x_j
    a_hat = adjacency + torch.eye(len(adjacency), dtype=torch.float64)
    deg, i = a_hat.sum(1), 0
    coefficient = (lambda j: 1 / deg[i]) if norm == "mean" else (lambda j: 1 / torch.sqrt(deg[i] * deg[j]))
    by_hand = sum(coefficient(j) * layer.projection(x[j]) for j in a_hat[i].nonzero().ravel()) + layer.bias
    torch.testing.assert_close(by_messages[i], by_hand)


def test_tutorial_gcn_example():
    layer = gnn.GCNLayer(2, 2, norm="mean")
    with torch.no_grad():
        layer.projection.weight.copy_(torch.eye(2))
    expected = torch.tensor([[1.0, 2], [3, 4], [4, 5], [4, 5]])  # the tutorial's printed output
    torch.testing.assert_close(layer(TUTORIAL_X, gnn.edge_index_from_adjacency(TUTORIAL_A)), expected)
    torch.testing.assert_close(layer.matrix_form(TUTORIAL_X, TUTORIAL_A), expected)


def test_tutorial_gat_example_by_hand():
    """The tutorial's GATLayer(2, 2, num_heads=2): identity projection, a = [[-0.2, 0.3],
    [0.1, -0.1]]. Head h then sees the scalar feature f = column h of X, and by the
    definition e_ij = LeakyReLU_0.2(a_h0 f_i + a_h1 f_j), alpha = softmax over j in N(i),
    out_i = sum_j alpha_ij f_j (heads concatenated)."""
    layer = gnn.GATLayer(2, 2, num_heads=2)
    a = [[-0.2, 0.3], [0.1, -0.1]]
    with torch.no_grad():
        layer.projection.weight.copy_(torch.eye(2))
        layer.projection.bias.zero_()
        layer.a.copy_(torch.tensor(a))
    out, (edges, attention) = layer(TUTORIAL_X, gnn.edge_index_from_adjacency(TUTORIAL_A), return_attention=True)
    probabilities = torch.zeros(2, 4, 4)
    probabilities[:, edges[1], edges[0]] = attention.T.detach()

    neighbours = {i: [j for j in range(4) if TUTORIAL_A[i, j]] for i in range(4)}
    expected_out, expected_p = np.zeros((4, 2)), np.zeros((2, 4, 4))
    for h in range(2):
        f = TUTORIAL_X[:, h].tolist()
        for i, js in neighbours.items():
            scores = [a[h][0] * f[i] + a[h][1] * f[j] for j in js]
            weights = [math.exp(s if s > 0 else 0.2 * s) for s in scores]
            for j, w in zip(js, weights):
                expected_p[h, i, j] = w / sum(weights)
                expected_out[i, h] += w / sum(weights) * f[j]
    np.testing.assert_allclose(probabilities.numpy(), expected_p, atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy(), expected_out, atol=1e-5)
    # node 0, head 0 on paper: e_00 = 0, e_01 = 0.3 * 2 = 0.6, alpha_01 = 1 / (1 + e^-0.6) = 0.6457
    assert probabilities[0, 0, 1].item() == pytest.approx(0.6457, abs=1e-4)
    assert out[0, 0].item() == pytest.approx(2 * 0.6457, abs=1e-3)
    # head 1, node 1, as recalled from the tutorial's printout (the hand derivation above is the check)
    np.testing.assert_allclose(probabilities[1, 1].numpy(), [0.2975, 0.2436, 0.2340, 0.2249], atol=1e-4)


def test_gat_heads_averaged_and_softmax_per_neighbourhood():
    adjacency, edges = random_graph(seed=2)
    x = torch.randn(len(adjacency), 4, generator=torch.Generator().manual_seed(3))
    concat = gnn.GATLayer(4, 6, num_heads=3, concat_heads=True)
    mean = gnn.GATLayer(4, 2, num_heads=3, concat_heads=False)
    mean.load_state_dict(concat.state_dict())  # the same parameters: 3 heads of 2 features
    torch.testing.assert_close(mean(x, edges), concat(x, edges).view(len(x), 3, 2).mean(1))
    _, (loops, attention) = concat(x, edges, return_attention=True)
    totals = torch.zeros(len(x), 3).index_add_(0, loops[1], attention)
    torch.testing.assert_close(totals, torch.ones(len(x), 3))
    huge = gnn.edge_softmax(torch.tensor([1000.0, 1001.0, -5.0]), torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(huge, torch.tensor([1 / (1 + math.e), math.e / (1 + math.e), 1.0]))


def test_renumbering_nodes_renumbers_outputs():
    adjacency, edges = random_graph(n=15, seed=4)
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(5))
    order = torch.randperm(15, generator=torch.Generator().manual_seed(6))
    x_renumbered, edges_renumbered = gnn.permute_graph(x, edges, order)
    for model in (gnn.GCN(6, 8, 3), gnn.GCN(6, 8, 3, norm="mean"), gnn.GAT(6, 4, 3, heads=2),
                  gnn.MaxAggregationLayer(6, 3)):
        model.eval()
        torch.testing.assert_close(model(x_renumbered, edges_renumbered), model(x, edges)[order])
    mlp = gnn.AdjacencyMLP(15, 6, 8, 3).eval()  # its inputs are tied to the node numbers
    assert not torch.allclose(mlp(x_renumbered, edges_renumbered), mlp(x, edges)[order], atol=1e-3)


def test_attention_on_the_complete_graph_is_fused_attention():
    q, k, v = torch.randn(3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(gnn.attention_message_passing(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert gnn.complete_graph(7).shape == (2, 49)


def test_walk_counts_are_adjacency_powers():
    triangle = np.ones((3, 3), dtype=int) - np.eye(3, dtype=int)
    assert gnn.count_walks(triangle, 0, 0, 3) == [(0, 1, 2, 0), (0, 2, 1, 0)]  # round the triangle both ways
    assert len(gnn.count_walks(triangle, 0, 0, 2)) == 2 and gnn.count_walks(triangle, 0, 1, 1) == [(0, 1)]
    adjacency = random_graph(n=6, p=0.5, seed=8)[0].numpy().astype(int)
    for length in (1, 2, 3):
        power = np.linalg.matrix_power(adjacency, length)
        assert [[len(gnn.count_walks(adjacency, s, t, length)) for t in range(6)] for s in range(6)] == power.tolist()


def test_sum_mean_max_differ_and_max_is_not_a_matrix():
    # hubs 0, 1, 2 receive from leaves with features {1, 3}, {2, 2} and {2}
    x = torch.tensor([0.0, 0, 0, 1, 3, 2, 2, 2])[:, None]
    edges = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 1, 1, 2]])
    hubs = {agg: gnn.propagate(x, edges, aggregation=agg)[:3, 0].tolist() for agg in ("sum", "mean", "max")}
    assert hubs == {"sum": [4, 4, 2], "mean": [2, 2, 2], "max": [3, 2, 2]}
    swapped = x[[0, 1, 2, 4, 3, 5, 6, 7]]  # hub 0's leaves exchange features: max(1+3, 3+1) = 4, not 3 + 3
    assert gnn.propagate(x + swapped, edges, aggregation="max")[0, 0] == 4
    layer = gnn.MaxAggregationLayer(1, 1)
    with torch.no_grad():
        layer.projection.weight.fill_(1.0)
        layer.projection.bias.zero_()
    assert layer(x, edges)[:3, 0].tolist() == [3, 2, 2]  # with the hub itself (0) in the maximum


# ------------------------------------------------------------------ Planetoid
class Payload:
    """Unpickled freely, this writes a file: what a tampered dataset file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_planetoid_refuses_a_tampered_pickle_unrun(tmp_path):
    marker = tmp_path / "payload_ran"
    tampered = tmp_path / "ind.cora.x"
    tampered.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing (__builtin__|builtins)\.exec"):
        read_planetoid_pickle(tampered)
    for part in PLANETOID_PARTS[1:]:  # the whole set, so that the loader gets as far as reading
        (tmp_path / f"ind.cora.{part}").write_bytes(b"")
    with pytest.raises(UnsafePickleError, match="ind.cora.x"):
        load_planetoid(tmp_path)
    assert not marker.exists()
    pickle.loads(tampered.read_bytes())  # the control: a free unpickling does run it
    assert marker.read_text() == "ran"


def test_planetoid_refuses_other_factories_and_missing_files(tmp_path):
    factory = tmp_path / "graph"
    factory.write_bytes(pickle.dumps(collections.defaultdict(np.dtype), protocol=2))
    with pytest.raises(UnsafePickleError, match="defaultdict"):
        read_planetoid_pickle(factory)
    with pytest.raises(DatasetNotFoundError, match="ind.cora.x"):
        load_planetoid(tmp_path)
    (tmp_path / "ind.cora.x").write_bytes(b"\x80\x02not a pickle")
    for part in PLANETOID_PARTS[1:]:
        (tmp_path / f"ind.cora.{part}").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="ind.cora.x"):
        load_planetoid(tmp_path)


def test_cora_files(shared_data):
    cora = load_planetoid(shared_data / "planetoid")
    assert cora.x.shape == (2708, 1433) and cora.num_classes == 7 and set(np.unique(cora.x)) == {0.0, 1.0}
    assert (len(cora.train), len(cora.val), len(cora.test)) == (140, 500, 1000)
    assert np.bincount(cora.y[cora.train]).tolist() == [20] * 7  # Planetoid: 20 labelled nodes per class
    assert np.bincount(cora.y).tolist() == [351, 217, 418, 818, 426, 298, 180]
    # 5,278 undirected links once duplicates are merged: 10,556 directed edges, as in PyG's Cora
    edges = cora.edge_index
    assert edges.shape == (2, 10556) and not (edges[0] == edges[1]).any()
    assert set(map(tuple, edges.T)) == set(map(tuple, edges[::-1].T))  # both directions
    assert not set(cora.train) & set(cora.test) and not set(cora.val) & set(cora.test)
    # on the real graph too, the sparse matrix form is the message passing
    x, edge_index = torch.from_numpy(cora.x).to_sparse(), torch.from_numpy(edges)
    adjacency = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(edges.shape[1]), (2708, 2708),
                                        check_invariants=True)
    layer = gnn.GCNLayer(1433, 8)
    torch.testing.assert_close(layer.matrix_form(x, adjacency), layer(x, edge_index), atol=1e-5, rtol=1e-4)


def test_stochastic_block_model_is_seeded_and_assortative():
    a, b = stochastic_block_model(seed=3), stochastic_block_model(seed=3)
    assert np.array_equal(a.edge_index, b.edge_index) and np.array_equal(a.x, b.x)
    same = a.y[a.edge_index[0]] == a.y[a.edge_index[1]]
    assert same.mean() > 0.6  # 5 neighbours in the class, 1.5 across the three others, on average
    assert np.bincount(a.y[a.train]).tolist() == [20] * 4
    assert len(set(a.train) | set(a.val) | set(a.test)) == a.num_nodes


# ------------------------------------------------------------------ the driver
quick = quick_run_fixture("gnn")


@pytest.mark.slow
def test_driver_quick(quick):
    out, metrics, manifest = quick
    assert {f["file"] for f in manifest["figures"]} == {
        "walks.png", "accuracy.png", "training_curves.png", "permutation.png", "attention_positions.png"}
    assert metrics["walks"]["agree"] and metrics["walks"]["counts"] == {"1": 0, "2": 1, "3": 2}
    accuracy = {k: v["mean"] for k, v in metrics["test_accuracy"].items()}
    assert accuracy["gcn"] > accuracy["mlp"] + 0.1, accuracy  # the neighbours help on the generated graph
    headline = manifest["headline"]
    assert (headline["value"], headline["baseline"]) == (accuracy["gcn"], accuracy["mlp"])
    assert headline["verdict"] == "beats the baseline" and 0 < headline["noise"] < 0.1
    permuted = {row["model"].split(",")[0]: row for row in metrics["permutation"]}
    assert permuted["GCN"]["same_predictions"] == 1.0 and permuted["GAT"]["same_predictions"] == 1.0
    assert permuted["MLP on [A"]["same_predictions"] < 0.9
    attention = metrics["attention"]
    assert attention["no positional encoding"]["largest_change"] < 1e-5
    assert attention["sinusoidal positional encoding"]["largest_change"] > 0.1
    assert json.loads((out / "config.json").read_text())["dataset"] == "sbm"


@pytest.mark.parametrize("option, value", [("--batch-size", "32"), ("--nodes-per-class", "10"),
                                           ("--gat-dropout", "1.5"), ("--weight-decay", "-0.1")])
def test_driver_refuses_bad_options(tmp_path, option, value):
    assert_refused(tmp_path, "gnn", option, value)


def test_driver_refuses_a_tampered_cora(tmp_path, shared_data):
    folder = tmp_path / "planetoid"
    shutil.copytree(shared_data / "planetoid", folder)
    marker = tmp_path / "payload_ran"
    (folder / "ind.cora.graph").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(SystemExit) as stop:
        main(["run", "gnn", "--quick", "--dataset", "cora", "--data-dir", str(folder), "--out", str(tmp_path / "out")])
    message = str(stop.value.code)
    assert "ind.cora.graph" in message and "exec" in message and "\n" not in message
    assert not marker.exists() and not list((tmp_path / "out").glob("*.png"))  # refused before any work


@pytest.mark.slow
def test_driver_on_cora(tmp_path, shared_data):
    metrics, manifest = run_quick("gnn", tmp_path / "out", "--dataset", "cora", "--data-dir",
                                  str(shared_data / "planetoid"))
    assert metrics["graph"]["nodes"] == 2708 and metrics["graph"]["split"] == [140, 500, 1000]
    accuracy = {k: v["mean"] for k, v in metrics["test_accuracy"].items()}
    assert accuracy["gcn"] > 0.7 and accuracy["gat"] > 0.7 and accuracy["mlp"] < accuracy["gcn"] - 0.1, accuracy
