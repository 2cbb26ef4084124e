"""Graph neural networks in plain torch, written so that the mechanics stay visible.

A graph is an edge list ``edge_index`` of shape (2, E): row 0 holds the source j and
row 1 the target i of each directed edge j -> i, and messages flow along the edges into
the targets (an undirected graph holds both directions). In matrix form the same graph is
the adjacency matrix with ``A[i, j] = 1`` for an edge j -> i, so that row i of ``A @ H``
sums the features of i's neighbours.

    propagate(x, edge_index, weight, aggregation)   message passing: sum, mean or max
    GCNLayer        Kipf and Welling's graph convolution, by message passing and in matrix
                    form (``matrix_form``); norm="mean": D^-1 (A + I), the UvA tutorial's
                    GCNLayer; norm="symmetric": D^-1/2 (A + I) D^-1/2, Kipf and Welling's
    normalized_adjacency(A, norm)    that matrix, dense (small figures) or torch sparse
    MaxAggregationLayer              the maximum over the neighbours: no matrix can do it
    GATLayer        Velickovic et al.'s graph attention over the edge list, several heads
    attention_message_passing(q, k, v)   self-attention as message passing on the complete graph
    sinusoidal_positions(length, dim)    the transformer's positional encodings
    GCN, GAT, MLP, AdjacencyMLP      two-layer node classifiers, all called as model(x, edge_index)
    train_full_batch                 full-batch training with model selection on validation nodes
    count_walks                      walks between two nodes by enumeration (to set against A^n)
"""
from __future__ import annotations

import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("mean", "symmetric")


# ------------------------------------------------------------------ graphs
def edge_index_from_adjacency(adjacency):
    """The edges j -> i of a dense adjacency matrix (``A[i, j] != 0``) as a (2, E) edge list."""
    target, source = torch.as_tensor(adjacency).nonzero(as_tuple=True)
    return torch.stack([source, target])


def adjacency_from_edge_index(edge_index, num_nodes):
    """The dense 0/1 adjacency matrix of an edge list: ``A[i, j] = 1`` for each edge j -> i."""
    adjacency = torch.zeros(num_nodes, num_nodes, device=edge_index.device)
    adjacency[edge_index[1], edge_index[0]] = 1.0
    return adjacency


def add_self_loops(edge_index, num_nodes):
    """The edges plus one loop i -> i per node (the "+ I"). Loops already in the list are
    dropped first, so that none counts twice (the tutorial's adjacency has them)."""
    keep = edge_index[0] != edge_index[1]
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, num_nodes)
    return torch.cat([edge_index[:, keep], loops], dim=1)


def complete_graph(num_nodes, device=None):
    """Every ordered pair (j, i), loops included: the graph a transformer's tokens live on."""
    nodes = torch.arange(num_nodes, device=device)
    return torch.stack([nodes.repeat(num_nodes), nodes.repeat_interleave(num_nodes)])


def permute_graph(x, edge_index, permutation):
    """The same graph with its nodes renumbered: new node k is old node ``permutation[k]``
    (x dense or torch sparse)."""
    new_id = torch.empty_like(permutation)
    new_id[permutation] = torch.arange(len(permutation), device=permutation.device)
    return x.index_select(0, permutation), new_id[edge_index]


def degree(index, num_nodes):
    """How often each node appears in ``index``: the targets give each node's in-degree."""
    return torch.bincount(index, minlength=num_nodes).float()


def _per_edge(values, like):
    """(E,) or (E, heads) values shaped to multiply messages of shape (E, ..., C)."""
    return values.reshape(values.shape + (1,) * (like.dim() - values.dim()))


# ------------------------------------------------------------ message passing
def propagate(x, edge_index, weight=None, aggregation="sum"):
    """Message passing: ``out[i] = AGG over edges j -> i of weight_ji * x[j]``.

    The messages are the source rows ``x[j]`` (times the edge's weight); ``index_add_``
    sums them into their targets, ``scatter_reduce_`` takes their maximum. x is (N, ...);
    weight is (E,) or (E, heads). A node without incoming edges gets zeros."""
    source, target = edge_index
    messages = x[source] if weight is None else x[source] * _per_edge(weight, x[source])
    out = x.new_zeros((x.shape[0],) + messages.shape[1:])
    if aggregation == "sum":
        return out.index_add_(0, target, messages)
    if aggregation == "mean":
        return out.index_add_(0, target, messages) / _per_edge(degree(target, len(x)).clamp(min=1), out)
    if aggregation == "max":
        index = _per_edge(target, messages).expand_as(messages)
        return out.scatter_reduce_(0, index, messages, reduce="amax", include_self=False)
    raise ValueError(f"aggregation {aggregation!r}: choose sum, mean or max")


def edge_softmax(scores, target, num_nodes):
    """The softmax of each edge's score among the edges into the same target (per head):
    attention weights that sum to one over every node's neighbourhood."""
    index = _per_edge(target, scores).expand_as(scores)
    with torch.no_grad():  # the largest score, subtracted so that exp cannot overflow
        top = scores.new_full((num_nodes,) + scores.shape[1:], -math.inf)
        top = top.scatter_reduce_(0, index, scores, reduce="amax")
    exp = (scores - top[target]).exp()
    return exp / scores.new_zeros(top.shape).index_add_(0, target, exp)[target]


def gcn_weights(edge_index, num_nodes, norm="symmetric"):
    """Each edge's coefficient c_ij in the graph convolution: 1 / d_i ("mean") or
    1 / sqrt(d_i d_j) ("symmetric"), d_i the in-degree of i in the given edge list."""
    source, target = edge_index
    deg = degree(target, num_nodes)
    if norm == "mean":
        return 1.0 / deg[target]
    if norm == "symmetric":
        return deg[target].rsqrt() * deg[source].rsqrt()
    raise ValueError(f"norm {norm!r}: choose one of {', '.join(NORMS)}")


def normalized_adjacency(adjacency, norm="symmetric"):
    """D^-1 (A + I) ("mean") or D^-1/2 (A + I) D^-1/2 ("symmetric") of a 0/1 adjacency
    matrix, D the diagonal of A + I's row sums. A dense A is done in matrix algebra; a
    torch sparse A gives a sparse matrix built from the edge list's coefficients."""
    if adjacency.is_sparse:
        target, source = adjacency.coalesce().indices()
        edges = add_self_loops(torch.stack([source, target]), adjacency.shape[0])
        weights = gcn_weights(edges, adjacency.shape[0], norm).to(adjacency.dtype)
        return torch.sparse_coo_tensor(edges.flip(0), weights, adjacency.shape, check_invariants=True).coalesce()
    a_hat = adjacency.clone().fill_diagonal_(1.0)  # A + I (a loop already there counts once)
    deg = a_hat.sum(dim=1)
    if norm == "mean":
        return torch.diag(1.0 / deg) @ a_hat
    if norm == "symmetric":
        d_inv_sqrt = torch.diag(deg.rsqrt())
        return d_inv_sqrt @ a_hat @ d_inv_sqrt
    raise ValueError(f"norm {norm!r}: choose one of {', '.join(NORMS)}")


# ------------------------------------------------------------------ layers
class GCNLayer(nn.Module):
    """h_i' = sum over j in N(i) and i itself of c_ij W h_j, plus a bias: the graph
    convolution. ``forward`` passes messages over the edge list; ``matrix_form`` computes
    the same numbers as Â (X W^T) + b with Â = ``normalized_adjacency(A, norm)``."""

    def __init__(self, c_in, c_out, norm="symmetric", bias=True):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r}: choose one of {', '.join(NORMS)}")
        self.norm = norm
        self.projection = nn.Linear(c_in, c_out, bias=False)
        # after the aggregation (Kipf and Welling's choice): with the symmetric norm the
        # coefficients of a row do not sum to one, so an aggregated bias would vary per node
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None

    def forward(self, x, edge_index):
        edges = add_self_loops(edge_index, len(x))
        out = propagate(self.projection(x), edges, gcn_weights(edges, len(x), self.norm))
        return out if self.bias is None else out + self.bias

    def matrix_form(self, x, adjacency):
        """The layer on a dense or torch sparse adjacency matrix A (0/1, without the + I)."""
        out = normalized_adjacency(adjacency, self.norm) @ self.projection(x)
        return out if self.bias is None else out + self.bias


class MaxAggregationLayer(nn.Module):
    """h_i' = max over j in N(i) and i itself of W h_j, feature by feature. Every matrix
    form M @ H is linear in H and a maximum is not (max(a + b) can be less than max(a) +
    max(b)), so no adjacency matrix, however normalised, computes this layer."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.projection = nn.Linear(c_in, c_out)

    def forward(self, x, edge_index):
        return propagate(self.projection(x), add_self_loops(edge_index, len(x)), aggregation="max")


class GATLayer(nn.Module):
    """Graph attention (Velickovic et al. 2018) over the edge list, with the UvA tutorial's
    parameter names. For each head, the score of the edge j -> i is
    e_ij = LeakyReLU(a . [W h_i || W h_j]); the weights alpha_ij are the softmax of the
    scores over i's neighbourhood (i included), and h_i' = sum_j alpha_ij W h_j. The heads
    are concatenated (c_out is then their total width) or averaged."""

    def __init__(self, c_in, c_out, num_heads=1, concat_heads=True, alpha=0.2, dropout=0.0):
        super().__init__()
        if concat_heads:
            if c_out % num_heads:
                raise ValueError(f"c_out {c_out} must be a multiple of num_heads {num_heads} to concatenate")
            c_out //= num_heads
        self.num_heads, self.concat_heads, self.alpha, self.dropout = num_heads, concat_heads, alpha, dropout
        self.projection = nn.Linear(c_in, c_out * num_heads)
        self.a = nn.Parameter(torch.empty(num_heads, 2 * c_out))  # one per head: [target part, source part]
        nn.init.xavier_uniform_(self.projection.weight, gain=1.414)
        nn.init.xavier_uniform_(self.a, gain=1.414)

    def forward(self, x, edge_index, return_attention=False):
        n = len(x)
        edges = add_self_loops(edge_index, n)
        source, target = edges
        h = self.projection(x).view(n, self.num_heads, -1)  # (N, heads, C)
        a_target, a_source = self.a.chunk(2, dim=1)
        # a . [W h_i || W h_j] = a_target . W h_i + a_source . W h_j: each half once per node
        scores = (h * a_target).sum(-1)[target] + (h * a_source).sum(-1)[source]  # (E, heads)
        attention = edge_softmax(F.leaky_relu(scores, self.alpha), target, n)
        out = propagate(h, edges, F.dropout(attention, self.dropout, self.training))
        out = out.reshape(n, -1) if self.concat_heads else out.mean(dim=1)
        return (out, (edges, attention)) if return_attention else out


def attention_message_passing(q, k, v):
    """Self-attention of L tokens (q, k, v of shape (L, d)) as message passing on the
    complete graph: the score of the edge j -> i is q_i . k_j / sqrt(d), the softmax runs
    over all edges into i, and i receives the weighted sum of the values v_j. The same
    numbers as ``F.scaled_dot_product_attention(q, k, v)`` without a mask."""
    edges = complete_graph(len(q), q.device)
    source, target = edges
    scores = (q[target] * k[source]).sum(-1) / math.sqrt(q.shape[-1])
    return propagate(v, edges, edge_softmax(scores, target, len(q)))


def sinusoidal_positions(length, dim):
    """The transformer's positional encodings (Vaswani et al. 2017), (length, dim), dim
    even: sin and cos of the position at wavelengths from 2 pi to 10000 * 2 pi."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(length, dim)
    encoding[:, 0::2], encoding[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return encoding


# ------------------------------------------------------------------ models
def feature_dropout(x, p, training):
    """Dropout on the input features. A torch sparse x (a real graph's bag of words) keeps
    its zeros and drops only its stored values, as Kipf and Welling do: on Cora, with 1.3 %
    of the entries nonzero, a dense dropout took a hundred times longer than the layer."""
    if x.is_sparse:
        x = x.coalesce()
        return torch.sparse_coo_tensor(x.indices(), F.dropout(x.values(), p, training), x.shape,
                                       check_invariants=True)
    return F.dropout(x, p, training)


class GCN(nn.Module):
    """Kipf and Welling's two-layer GCN: dropout, GCN, ReLU, dropout, GCN to class scores."""

    def __init__(self, c_in, hidden, classes, norm="symmetric", dropout=0.5):
        super().__init__()
        self.dropout = dropout
        self.layer1, self.layer2 = GCNLayer(c_in, hidden, norm), GCNLayer(hidden, classes, norm)

    def forward(self, x, edge_index):
        x = feature_dropout(x, self.dropout, self.training)
        x = F.dropout(F.relu(self.layer1(x, edge_index)), self.dropout, self.training)
        return self.layer2(x, edge_index)


class GAT(nn.Module):
    """Velickovic et al.'s two-layer GAT for Cora: ``heads`` heads of ``hidden`` features,
    concatenated, ELU, then one attention head to the class scores; dropout on the inputs
    of both layers and on the attention weights."""

    def __init__(self, c_in, hidden, classes, heads=8, dropout=0.6):
        super().__init__()
        self.dropout = dropout
        self.layer1 = GATLayer(c_in, hidden * heads, heads, concat_heads=True, dropout=dropout)
        self.layer2 = GATLayer(hidden * heads, classes, 1, concat_heads=False, dropout=dropout)

    def forward(self, x, edge_index):
        x = feature_dropout(x, self.dropout, self.training)
        x = F.dropout(F.elu(self.layer1(x, edge_index)), self.dropout, self.training)
        return self.layer2(x, edge_index)


class MLP(nn.Module):
    """A two-layer perceptron on each node's features alone; the graph is ignored."""

    def __init__(self, c_in, hidden, classes, dropout=0.5):
        super().__init__()
        self.dropout = dropout
        self.net = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, x, edge_index=None):
        return self.net(feature_dropout(x, self.dropout, self.training))


class AdjacencyMLP(MLP):
    """The MLP on [A, X]: each node's row of the adjacency matrix beside its features. Its
    input column j means "is a neighbour of node j", so the weights are tied to the node
    numbering, and renumbering the nodes changes what every column means."""

    def __init__(self, num_nodes, c_in, hidden, classes, dropout=0.5):
        super().__init__(num_nodes + c_in, hidden, classes, dropout)
        self.num_nodes = num_nodes

    def forward(self, x, edge_index):
        n = self.num_nodes
        ones = torch.ones(edge_index.shape[1], device=x.device)
        adjacency = torch.sparse_coo_tensor(edge_index.flip(0), ones, (n, n), check_invariants=True)
        return super().forward(torch.cat([adjacency, x if x.is_sparse else x.to_sparse()], dim=1))


# ---------------------------------------------------------------- training
def train_full_batch(model, x, edge_index, y, train, val, epochs, lr, weight_decay=5e-4):
    """Train a node classifier on the whole graph at once: each epoch is one Adam step on
    the cross-entropy of the training nodes, then an evaluation of every node. The weights
    of the epoch with the best validation accuracy are put back at the end (the test nodes
    are never looked at). A plain loop rather than the Trainer, which is built around
    DataLoaders of independent samples: here every prediction needs the whole graph.
    Returns the history, one dict per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history, best, best_state = [], -1.0, None
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x, edge_index)[train], y[train])
        loss.backward()
        optimizer.step()
        logits = predict(model, x, edge_index)
        row = {"epoch": epoch, "loss": loss.item(), "accuracy": accuracy(logits[train], y[train]),
               "val_loss": F.cross_entropy(logits[val], y[val]).item(), "val_accuracy": accuracy(logits[val], y[val])}
        history.append(row)
        if row["val_accuracy"] > best:
            best, best_state = row["val_accuracy"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return history


def predict(model, x, edge_index):
    """The model's logits for every node, in eval mode (no dropout), without gradients."""
    model.eval()
    with torch.no_grad():
        return model(x, edge_index)


def accuracy(logits, y):
    return (logits.argmax(dim=1) == y).float().mean().item()


# ------------------------------------------------------------------- walks
def count_walks(adjacency, source, target, length):
    """The walks of ``length`` steps from ``source`` to ``target``, listed one by one (each a
    tuple of nodes): every sequence source, v1, ..., target whose consecutive pairs (a, b)
    all have A[a][b] != 0, which is what (A^length)[source, target] counts."""
    n = len(adjacency)
    walks = []
    for middle in itertools.product(range(n), repeat=length - 1):
        walk = (source, *middle, target)
        if all(adjacency[a][b] for a, b in zip(walk, walk[1:])):
            walks.append(walk)
    return walks
