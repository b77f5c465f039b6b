"""Hostile requests to the torch-free runtimes (issue 17, item 5 and 10): the query
encoder excludes the whole history, breaks exact ties toward the smaller id, refuses
bad k and all-padding histories; the index runtime refuses NaN / inf queries and bad k.

The encoder runtime is built around a tiny ONNX graph (``state = sum of the item
vectors of the window``) served by ONNX Runtime, without a training run; the index
bundle is a Flat index over a few random vectors, built by the project's code."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.serving.bundle import RequestError
from recsys.serving.encoder import QueryEncoderRuntime
from recsys.utils.errors import DataError

MAX_LEN = 20


def _sum_encoder(dim: int, user_vocab: int | None = None) -> bytes:
    """ONNX: items (B, T) int64 -> state (B, D) = sum_t table[items[:, t]]
    (+ user_table[user_id] when ``user_vocab``); the tables are graph inputs' initializers."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inputs = [helper.make_tensor_value_info("items", TensorProto.INT64, ["batch", "seq"])]
    nodes = [helper.make_node("Gather", ["table", "items"], ["vecs"], axis=0),
             helper.make_node("ReduceSum", ["vecs", "axes"], ["hist" if user_vocab else "state"], keepdims=0)]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    if user_vocab:
        inputs.append(helper.make_tensor_value_info("user_id", TensorProto.INT64, ["batch"]))
        nodes += [helper.make_node("Gather", ["user_table", "user_id"], ["uvec"], axis=0),
                  helper.make_node("Add", ["hist", "uvec"], ["state"])]
        u = rng.normal(size=(user_vocab, dim)).astype(np.float32)
        inits.append(helper.make_tensor("user_table", TensorProto.FLOAT, u.shape, u.ravel()))
    graph = helper.make_graph(nodes, "sum_encoder", inputs,
                              [helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", dim])], inits)
    graph.input.append(helper.make_tensor_value_info("table", TensorProto.FLOAT, [None, dim]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _Session:
    """ONNX Runtime over the graph, with the history table fed as an input."""

    def __init__(self, model: bytes, table: np.ndarray):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.table = table

    def run(self, names, feeds):
        return self.sess.run(names, {**feeds, "table": self.table})

    def get_providers(self):
        return self.sess.get_providers()


def _runtime(table: np.ndarray, max_len: int | None = MAX_LEN, user_vocab: int | None = None) -> QueryEncoderRuntime:
    """A QueryEncoderRuntime over a real ORT session, without a bundle on disk."""
    rt = object.__new__(QueryEncoderRuntime)
    rt.bundle_dir = Path("<test bundle>")
    rt.vocab_size, rt.max_len = len(table), max_len
    rt.side_inputs = [{"name": "user_id", "dtype": "int64", "shape": ["batch"], "vocab_size": user_vocab}] \
        if user_vocab else []
    rt.item_embeddings = np.ascontiguousarray(table, dtype=np.float32)
    rt.manifest = {"kind": "query_encoder", "inputs": [{"name": "items", "vocab_size": len(table), "max_len": max_len}]}
    rt.session = _Session(_sum_encoder(table.shape[1], user_vocab), rt.item_embeddings)
    rt.providers = rt.session.get_providers()
    return rt


N_ITEMS = 300


@pytest.fixture(scope="module")
def ranked_table() -> np.ndarray:
    """Item j scores (state . table[j]) = state_0 * bias_j: one order for every
    user, items 1..100 (the long history) the best of all, all scores distinct."""
    t = np.zeros((N_ITEMS + 1, 2), dtype=np.float32)
    t[1:, 0] = 1.0 + np.arange(N_ITEMS, 0, -1, dtype=np.float32) / N_ITEMS  # smaller id, higher score
    return t


def test_exclude_seen_excludes_the_whole_history_not_only_the_window(ranked_table):
    rt = _runtime(ranked_table)
    history = np.arange(1, 101)  # 100 items, the encoder reads the last 20
    ids, scores = rt.top_k(history[None], k=10)
    assert not set(ids[0].tolist()) & set(history.tolist()), ids  # old code: items 1..10 (seen, outside the window)
    assert ids[0].tolist() == list(range(101, 111))  # the best unseen items
    state = ranked_table[history[-MAX_LEN:]].sum(0)  # still encoded from the window only
    np.testing.assert_allclose(scores[0], (ranked_table[101:111] @ state), rtol=1e-6)
    # the same request as (B, T) with padding, batched with a short row
    batch = np.zeros((2, 100), dtype=np.int64)
    batch[0] = history
    batch[1, -3:] = [5, 6, 7]
    ids2, _ = rt.top_k(batch, k=10)
    assert ids2[0].tolist() == ids[0].tolist()
    assert ids2[1].tolist() == [1, 2, 3, 4, 8, 9, 10, 11, 12, 13]
    assert rt.top_k(history[None], k=3, exclude_seen=False)[0][0].tolist() == [1, 2, 3]


def test_k_larger_than_the_unseen_items_is_refused(ranked_table):
    rt = _runtime(ranked_table, max_len=None)
    everything_but_five = np.arange(1, N_ITEMS - 4)
    assert rt.top_k(everything_but_five, k=5)[0][0].tolist() == list(range(N_ITEMS - 4, N_ITEMS + 1))
    with pytest.raises(RequestError, match="k=6: row 0 has seen 295 of the 300 items, only 5 are left"):
        rt.top_k(everything_but_five, k=6)


@pytest.mark.parametrize("k", [10, 3, 1])
def test_exact_ties_go_to_the_smaller_id(k):
    """Every item has the same vector: all scores tie, so the top k are the k smallest
    unseen ids, in id order (argpartition alone picked arbitrary tied items at the cut)."""
    t = np.ones((51, 4), dtype=np.float32)
    t[0] = 0
    rt = _runtime(t)
    seen = np.array([[0, 0, 4, 2]])
    ids, scores = rt.top_k(seen, k=k)
    assert ids[0].tolist() == [1, 3, 5, 6, 7, 8, 9, 10, 11, 12][:k]
    assert np.all(scores == scores[0, 0])


def test_ties_at_the_cut_behind_distinct_scores():
    t = np.ones((41, 2), dtype=np.float32)
    t[0] = 0
    t[39] = t[40] = 3.0  # two clear winners, then 38 tied items
    t[[30, 31, 32]] = 2.0
    rt = _runtime(t)
    ids, _ = rt.top_k(np.array([[7]]), k=8)
    assert ids[0].tolist() == [39, 40, 30, 31, 32, 1, 2, 3]


@pytest.mark.parametrize("k, pattern", [(-3, "k=-3"), (0, "k=0"), (2.7, "k=2.7"), (True, "k=True"),
                                         ("5", "k='5'"), (float("nan"), "k=nan"), (N_ITEMS + 1, f"k={N_ITEMS + 1}")])
def test_bad_k_is_refused(ranked_table, k, pattern):
    rt = _runtime(ranked_table)
    with pytest.raises(RequestError, match=pattern) as e:
        rt.top_k(np.array([[1, 2]]), k=k)
    assert "\n" not in str(e.value)


def test_integral_k_types_are_accepted(ranked_table):
    rt = _runtime(ranked_table)
    for k in (np.int64(4), np.int32(4), 4.0):
        assert rt.top_k(np.array([[1, 2]]), k=k)[0].shape == (1, 4)


def test_all_padding_history_is_refused(ranked_table):
    rt = _runtime(ranked_table)
    rows = np.array([[0, 0, 3], [0, 0, 0]])
    for call in (lambda: rt.top_k(rows, k=5), lambda: rt.encode(rows), lambda: rt.encode(np.zeros(4, np.int64))):
        with pytest.raises(RequestError, match="row [01] is all padding .*cold-start") as e:
            call()
        assert "\n" not in str(e.value)


def test_all_padding_history_is_a_cold_start_for_encoders_with_side_inputs(ranked_table):
    """The two-tower user tower encodes an empty history from the user id alone."""
    rt = _runtime(ranked_table, user_vocab=7)
    ids, _ = rt.top_k(np.zeros((2, 5), np.int64), k=4, user_id=np.array([3, 0]))
    assert ids.shape == (2, 4) and (ids > 0).all()


# ----------------------------------------------------------------------------- index runtime

DIM = 8


@pytest.fixture(scope="module")
def index_rt(tmp_path_factory):
    from recsys.retrieval.build import IndexSpec, build_bundle
    from recsys.artifacts.embeddings import write_embedding_dir
    from recsys.serving.index import IndexRuntime

    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("emb")
    items = np.array([f"i{j}" for j in range(50)])
    users = np.array([f"u{j}" for j in range(5)])
    write_embedding_dir(d, {"item_id": items, "embedding": rng.normal(size=(50, DIM)).astype(np.float32)},
                        users={"user_id": users, "embedding": rng.normal(size=(5, DIM)).astype(np.float32)},
                        seen={"user_id": np.repeat(users, 3), "item_id": items[rng.integers(0, 50, 15)]},
                        meta={"metric": "ip", "model": "test", "data_fingerprint": "fp"})
    out = tmp_path_factory.mktemp("b") / "flat"
    build_bundle(d, out, IndexSpec(name="flat", factory="Flat"))
    return IndexRuntime(out)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_index_refuses_non_finite_queries(index_rt, bad):
    q = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
    q[2, 5] = bad
    for call in (lambda: index_rt.search(q, 5), lambda: index_rt.search_filtered(q, 5)):
        with pytest.raises(DataError, match=r"query vector row 2 has a non-finite value") as e:
            call()
        assert "\n" not in str(e.value)
    assert index_rt.search(q[:2], 5).rows.shape == (2, 5)


@pytest.mark.parametrize("k, pattern", [(-3, "k=-3: must be >= 1"), (0, "k=0: must be >= 1"),
                                         (2.7, "k=2.7: must be a positive integer"),
                                         (True, "k=True: must be a positive integer")])
def test_index_refuses_bad_k(index_rt, k, pattern):
    q = np.ones((1, DIM), np.float32)
    calls = [lambda: index_rt.search(q, k), lambda: index_rt.search_users(["u1"], k, exclude_seen=True),
             lambda: index_rt.similar_items(["i3"], k)]
    for call in calls:
        with pytest.raises(DataError, match=pattern):
            call()


def test_index_accepts_numpy_int_k(index_rt):
    assert index_rt.search_users(["u1"], np.int64(4), exclude_seen=True).rows.shape == (1, 4)
    assert index_rt.search(np.ones((1, DIM)), np.int32(3)).rows.shape == (1, 3)
