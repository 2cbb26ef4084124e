"""Graphs for node classification, as numpy arrays (both engines read them).

    Graph                          features x (N, F), labels y (N,), edge_index (2, E) with
                                   source and target rows (an undirected edge both ways),
                                   and the train / val / test node indices
    load_planetoid(data_dir)       the Cora citation graph in the Planetoid files of Yang et
                                   al. 2016, with their standard split (140 / 500 / 1,000)
    stochastic_block_model(...)    a seeded random graph of communities whose nodes carry
                                   noisy class-dependent features

The Planetoid files ``ind.cora.{x, y, tx, ty, allx, ally, graph}`` are Python-2 pickles
of scipy.sparse csr matrices, numpy arrays and a ``collections.defaultdict`` of adjacency
lists; ``ind.cora.test.index`` is text. They are read with the CIFAR loader's restricted
unpickler, allowed exactly these classes besides: a csr matrix arrives as its parts
(data, indices, indptr, shape), which scipy then checks and assembles; a defaultdict only
with ``list`` as its factory. Anything else a file names is refused before it runs.
"""
from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse

from .download import DatasetNotFoundError, data_root
from .formats import _ALLOWED, CorruptFileError, RestrictedUnpickler, UnsafePickleError

PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/tree/master/data"
PLANETOID_VAL_SIZE = 500  # the validation nodes follow the training nodes (Kipf and Welling's split)


@dataclass
class Graph:
    name: str
    x: np.ndarray           # (N, F) float32 node features
    y: np.ndarray           # (N,) int64 class of each node
    edge_index: np.ndarray  # (2, E) int64: row 0 the source, row 1 the target of each edge
    train: np.ndarray       # node indices of each split
    val: np.ndarray
    test: np.ndarray
    classes: list = field(default_factory=list)

    @property
    def num_nodes(self):
        return len(self.y)

    @property
    def num_classes(self):
        return len(self.classes)


# ---------------------------------------------------------------- Planetoid
class _CSRParts:
    """What a pickled scipy csr_matrix becomes here: a bare object whose attributes the
    pickle sets (format, _shape, data, indices, indptr, ...). ``_as_csr`` turns it into a
    checked csr matrix, so that no scipy code runs on the pickle's say-so."""


def _defaultdict(factory):
    if factory is not list:
        raise UnsafePickleError(f"defaultdict({factory!r}) refused; Planetoid graphs are dicts of lists")
    return collections.defaultdict(list)


_PLANETOID_ALLOWED = {
    **_ALLOWED,
    ("scipy.sparse.csr", "csr_matrix"): _CSRParts,
    ("scipy.sparse._csr", "csr_matrix"): _CSRParts,
    ("collections", "defaultdict"): _defaultdict,
    ("__builtin__", "list"): list,  # Python 2's name for it
    ("builtins", "list"): list,
}


class PlanetoidUnpickler(RestrictedUnpickler):
    """The CIFAR unpickler's numpy arrays and plain containers, plus csr matrices (as
    their parts) and a defaultdict of lists: nothing else is looked up."""
    allowed = _PLANETOID_ALLOWED
    format_contains = ("Planetoid files contain only scipy csr matrices, numpy arrays and a dict of lists, "
                       "so this file is not an official Planetoid file")


def read_planetoid_pickle(path):
    """One Planetoid pickle, loaded without running code (csr matrices as ``_CSRParts``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return PlanetoidUnpickler(f, encoding="latin1").load()  # latin1: Python 2's byte strings
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError) as exc:
        raise CorruptFileError(f"{path}: not a readable Planetoid pickle ({type(exc).__name__}: {exc}); "
                               "the file is truncated or corrupted, get it again") from exc


def _as_csr(parts, path):
    if not isinstance(parts, _CSRParts):
        raise CorruptFileError(f"{path}: expected a sparse feature matrix, found {type(parts).__name__}")
    try:
        matrix = scipy.sparse.csr_matrix((parts.data, parts.indices, parts.indptr), shape=parts._shape)
        matrix.check_format(full_check=True)  # every column index inside the shape
    except (AttributeError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"{path}: not a valid csr matrix ({exc})") from None
    return matrix


def _as_labels(array, path):
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise CorruptFileError(f"{path}: expected a 2-d array of one-hot labels, found {type(array).__name__}")
    return array


def load_planetoid(data_dir=None, name="cora"):
    """The Planetoid graph ``name`` from ``data_dir`` (the folder with the files, or the
    data directory holding them under ``planetoid/``), with the standard split: the
    labelled nodes of ``ind.NAME.y`` train, the next 500 validate, ``test.index`` tests."""
    root = data_root(data_dir)
    folder = next((f for f in (root, root / "planetoid") if (f / f"ind.{name}.x").exists()), root)
    paths = {part: folder / f"ind.{name}.{part}" for part in PLANETOID_PARTS}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"no Planetoid {name} files in {folder} (missing {', '.join(missing)}); "
                                   f"get ind.{name}.* from {PLANETOID_URL} and pass their folder as --data-dir")
    x, tx, allx = (_as_csr(read_planetoid_pickle(paths[p]), paths[p]) for p in ("x", "tx", "allx"))
    y, ty, ally = (_as_labels(read_planetoid_pickle(paths[p]), paths[p]) for p in ("y", "ty", "ally"))
    graph = read_planetoid_pickle(paths["graph"])
    try:
        test_index = np.array([int(line) for line in paths["test.index"].read_text().split()], dtype=np.int64)
    except ValueError as exc:
        raise CorruptFileError(f"{paths['test.index']}: expected one node number per line ({exc})") from None

    # allx holds the first nodes (training nodes first), tx the test nodes in the order of
    # test.index; the test nodes are numbered after the others (true of Cora).
    n = allx.shape[0] + tx.shape[0]
    test = np.sort(test_index)
    if len(test_index) != tx.shape[0] or not np.array_equal(test, np.arange(allx.shape[0], n)):
        raise CorruptFileError(f"{paths['test.index']}: expected the {tx.shape[0]} test nodes "
                               f"{allx.shape[0]}..{n - 1} in some order")
    features = np.vstack([allx.toarray(), tx.toarray()]).astype(np.float32)
    labels = np.vstack([ally, ty])
    features[test_index], labels[test_index] = features[test], labels[test]  # row k of tx is node test_index[k]
    if labels.shape[0] != n or x.shape[0] != y.shape[0] or x.shape[1] != features.shape[1]:
        raise CorruptFileError(f"{folder}: the files' shapes do not fit together (allx {allx.shape}, tx "
                               f"{tx.shape}, ally {ally.shape}, ty {ty.shape}, x {x.shape}, y {y.shape})")
    return Graph(name, features, labels.argmax(axis=1), _edges_of(graph, n, paths["graph"]),
                 train=np.arange(y.shape[0]), val=np.arange(y.shape[0], y.shape[0] + PLANETOID_VAL_SIZE),
                 test=test, classes=[f"class {k}" for k in range(labels.shape[1])])


def _edges_of(graph, num_nodes, path):
    """The dict of adjacency lists as an undirected edge list: both directions, once each,
    without self-loops (the layers add their own)."""
    if not isinstance(graph, dict):
        raise CorruptFileError(f"{path}: expected a dict of adjacency lists, found {type(graph).__name__}")
    try:
        pairs = np.array([(int(i), int(j)) for i, neighbours in graph.items() for j in neighbours], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: adjacency lists of node numbers expected ({exc})") from None
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_nodes):
        raise CorruptFileError(f"{path}: node numbers outside 0..{num_nodes - 1}")
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0).T.copy()


# --------------------------------------------------------- stochastic block model
def stochastic_block_model(nodes_per_class=100, classes=4, in_degree=5.0, out_degree=1.5, features=16, noise=3.0,
                           train_per_class=20, val_fraction=0.25, seed=0):
    """A random graph of ``classes`` communities: each node has on average ``in_degree``
    neighbours in its own class and ``out_degree`` in the others (each pair linked
    independently). Its features are its class's mean (drawn from N(0, 1)) plus
    N(0, noise^2) noise, so that the features alone are ambiguous and the neighbours help.
    Node numbers are in random order; ``train_per_class`` nodes of each class train, a
    ``val_fraction`` of all nodes validates, the rest test."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(classes), nodes_per_class))
    n = len(y)
    p_in, p_out = in_degree / nodes_per_class, out_degree / (nodes_per_class * (classes - 1))
    linked = np.triu(rng.random((n, n)) < np.where(y[:, None] == y[None, :], p_in, p_out), k=1)
    target, source = np.nonzero(linked | linked.T)
    means = rng.normal(size=(classes, features))
    x = (means[y] + noise * rng.normal(size=(n, features))).astype(np.float32)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:train_per_class] for c in range(classes)])
    rest = rng.permutation(np.setdiff1d(np.arange(n), train))
    val_size = int(val_fraction * n)
    return Graph("sbm", x, y.astype(np.int64), np.stack([source, target]).astype(np.int64), np.sort(train),
                 np.sort(rest[:val_size]), np.sort(rest[val_size:]), [f"class {k}" for k in range(classes)])
