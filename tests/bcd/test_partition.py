"""Fixed block partitions (mmopt/bcd/partition.py), checked property by property."""

import numpy as np
import pytest
from _helpers import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from mmopt.bcd.partition import check_blocks, make_partition, red_black_partition
from mmopt.datasets import make_lattice_graph

FAST = fuzz_settings(30)


@FAST
@given(p=st.integers(1, 40), block_size=st.integers(1, 12), seed=st.integers(0, 1000),
       kind=st.sampled_from(["order", "sorted", "avg"]))
def test_every_kind_is_a_partition_of_small_blocks(p, block_size, seed, kind):
    lipschitz = np.random.default_rng(seed).uniform(0.1, 10.0, p)
    blocks = make_partition(kind, lipschitz, block_size)
    # A partition: every coordinate exactly once (checked by counting, not by check_blocks).
    np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), np.arange(p))
    assert len(blocks) == -(-p // block_size)
    assert all(0 < b.size <= block_size for b in blocks)
    check_blocks(blocks, p)  # and the validator agrees


def test_sorted_groups_similar_constants_and_avg_balances_them():
    lipschitz = np.arange(1.0, 13.0)  # 12 coordinates, constants 1..12
    sorted_blocks = make_partition("sorted", lipschitz, 4)
    assert [sorted(lipschitz[b]) for b in sorted_blocks] == [
        [9.0, 10.0, 11.0, 12.0], [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]]
    means = [lipschitz[b].mean() for b in make_partition("avg", lipschitz, 4)]
    assert max(means) - min(means) <= 2.0 < 4.0  # 'sorted' spreads them by 4 per block


def test_order_and_sorted_cut_consecutive_runs():
    lip = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    assert [b.tolist() for b in make_partition("order", lip, 2)] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in make_partition("sorted", lip, 2)] == [[1, 3], [2, 4], [0]]


@pytest.mark.parametrize("side", [3, 4])
def test_red_black_classes_of_a_lattice_have_no_inner_edge(side):
    graph, _ = make_lattice_graph(side, n_labelled=1, random_state=0)
    classes = red_black_partition(graph)
    assert len(classes) == 2  # a lattice is bipartite
    n = graph.shape[0]
    np.testing.assert_array_equal(np.sort(np.concatenate(classes)), np.arange(n))
    dense = graph.toarray()
    for nodes in classes:
        inner = dense[np.ix_(nodes, nodes)]
        assert not np.any(inner - np.diag(np.diag(inner)))
