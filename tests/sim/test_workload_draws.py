"""The client workload's draws (`Simulation._client_workload`): the service is drawn with
cumulative weights built once, the very draws `random.choices` makes from the weights."""

from __future__ import annotations

import itertools
import random

import pytest


@pytest.mark.parametrize(
    "weights", [[1], [3, 1], [0.7, 0.2, 0.1], [1, 0, 2, 5], [0.1] * 7], ids=str
)
def test_choices_with_cumulative_weights_built_once_draws_the_same(weights: list[float]) -> None:
    services = [f"s{i}" for i in range(len(weights))]
    cum_weights = list(itertools.accumulate(weights))
    for seed in range(20):
        a, b = random.Random(seed), random.Random(seed)
        for _ in range(200):
            drawn = b.choices(services, cum_weights=cum_weights)[0]
            assert a.choices(services, weights)[0] == drawn
            assert a.random() == b.random()  # the generators stay in step
