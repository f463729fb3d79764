"""Pareto tools against hand-computed values."""

import pytest

from oat.frontier.pareto import deficit, dominates, gap, hypervolume, hypervolume_ratio, non_dominated

POINTS = [(0.9, 0.1), (0.8, 0.4), (0.5, 0.5), (0.6, 0.3), (0.8, 0.4)]


def test_non_dominated_subset():
    assert non_dominated(POINTS) == [(0.5, 0.5), (0.8, 0.4), (0.9, 0.1)]
    assert non_dominated([(0.7, 0.2)]) == [(0.7, 0.2)]
    assert non_dominated([(0.7, 0.2), (0.7, 0.3)]) == [(0.7, 0.3)]  # equal SA: the higher RA wins
    assert dominates((0.7, 0.3), (0.7, 0.2)) and not dominates((0.7, 0.3), (0.7, 0.3))


def test_hypervolume_is_the_area_of_the_union_of_rectangles():
    # [0, .5]×[0, .5] + [.5, .8]×[0, .4] + [.8, .9]×[0, .1] = .25 + .12 + .01
    assert hypervolume(POINTS) == pytest.approx(0.38)
    assert hypervolume([(1.0, 1.0)]) == pytest.approx(1.0)
    assert hypervolume([]) == 0.0
    # adding a dominated point changes nothing; a new non-dominated one adds exactly its new area
    assert hypervolume(POINTS + [(0.4, 0.2)]) == pytest.approx(0.38)
    assert hypervolume(POINTS + [(0.3, 0.7)]) == pytest.approx(0.38 + 0.3 * 0.2)


def test_hypervolume_ratio():
    assert hypervolume_ratio([(0.5, 0.5)], POINTS) == pytest.approx(0.25 / 0.38)
    with pytest.raises(ValueError, match="zero hypervolume"):
        hypervolume_ratio(POINTS, [(0.0, 0.5)])


def test_deficit_and_gap():
    frontier = non_dominated(POINTS)
    # (0.6, 0.3) must gain 0.1 in both to escape (0.8, 0.4)
    assert deficit((0.6, 0.3), frontier) == pytest.approx(0.1)
    assert deficit((0.8, 0.4), frontier) == 0.0  # on the frontier
    assert deficit((0.95, 0.05), frontier) == 0.0  # beyond it in SA: not dominated
    assert deficit((0.85, 0.2), frontier) == 0.0  # between frontier points
    # behind (0.5, 0.5) by min(0.2, 0.3) and behind (0.8, 0.4) by min(0.5, 0.2): the larger escape, 0.2
    assert deficit((0.3, 0.2), frontier) == pytest.approx(0.2)
    result = gap([(0.6, 0.3), (0.8, 0.4), (0.3, 0.2)], frontier)
    assert result["deficits"] == pytest.approx([0.1, 0.0, 0.2])
    assert result["mean_deficit"] == pytest.approx(0.1)
    assert result["worst_deficit"] == pytest.approx(0.2)
    assert result["dominated"] == 2


def test_points_outside_the_unit_square_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hypervolume([(97.0, 40.0)])  # percentages instead of fractions
