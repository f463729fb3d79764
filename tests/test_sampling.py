import math

import pytest
import torch

from oat.sampling import (
    BetaSampler,
    FixedSampler,
    ReferenceSampler,
    SandwichSampler,
    UniformSampler,
    forced_zero_count,
    make_sampler,
    sampler_names,
)

REFERENCE = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)


def _zeros(lam):
    return int((lam == 0).sum())


@pytest.mark.parametrize("batch_size", [1, 5, 6, 7, 12, 128])
def test_reference_forces_ceil_b_over_size_zeros_and_uses_only_the_set(batch_size):
    sampler = ReferenceSampler(seed=3)
    for _ in range(5):
        lam = sampler.sample(batch_size)
        assert lam.shape == (batch_size,) and lam.dtype == torch.float32
        # Non-zero values are drawn only from the non-zero part of Λ, so the zero count is exact.
        assert _zeros(lam) == math.ceil(batch_size / len(REFERENCE))
        allowed = torch.tensor(REFERENCE)
        assert bool((lam[:, None] == allowed[None, :]).any(dim=1).all())


def test_reference_zero_positions_are_random_and_nonzero_values_uniform():
    sampler = ReferenceSampler(seed=0)
    first_zero_positions = set()
    counts = torch.zeros(len(REFERENCE) - 1)
    nonzero = torch.tensor(REFERENCE[1:])
    for _ in range(400):
        lam = sampler.sample(12)
        first_zero_positions.add(int((lam == 0).nonzero()[0]))
        hits = lam[lam != 0][:, None] == nonzero[None, :]
        counts += hits.sum(0)
    assert len(first_zero_positions) > 5  # zeros are not always at the front
    shares = counts / counts.sum()
    assert torch.allclose(shares, torch.full_like(shares, 0.2), atol=0.02)


def test_reference_without_zero_in_the_set_forces_nothing():
    lam = ReferenceSampler(values=(0.5, 1.0), seed=0).sample(1000)
    assert _zeros(lam) == 0
    assert set(lam.tolist()) == {0.5, 1.0}
    assert torch.equal(ReferenceSampler(values=(0.0,)).sample(4), torch.zeros(4))


@pytest.mark.parametrize("batch_size", [1, 2, 6, 7, 64])
def test_uniform_forced_zeros_and_range(batch_size):
    sampler = UniformSampler(low=0.2, high=0.8, zero_share=0.25, seed=1)
    lam = sampler.sample(batch_size)
    n_zero = math.ceil(batch_size * 0.25)
    assert _zeros(lam) == n_zero
    rest = lam[lam != 0]
    assert rest.numel() == batch_size - n_zero
    assert bool(((rest >= 0.2) & (rest <= 0.8)).all())


def test_uniform_distribution_sanity():
    lam = UniformSampler(zero_share=0.0, seed=0).sample(20000)
    assert _zeros(lam) == 0
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 1 / 12) < 0.003
    assert lam.min() >= 0 and lam.max() <= 1


def test_forced_zero_count_is_robust_to_rounding():
    assert forced_zero_count(6, 1 / 6) == 1
    assert forced_zero_count(12, 1 / 6) == 2
    assert forced_zero_count(7, 1 / 6) == 2
    assert forced_zero_count(10, 0.3) == 3  # 10·0.3 = 3.0000000000000004 in floating point
    assert forced_zero_count(1, 1 / 6) == 1
    assert forced_zero_count(5, 0.0) == 0
    assert forced_zero_count(5, 1.0) == 5


@pytest.mark.parametrize("a,b", [(2.0, 5.0), (0.5, 0.5), (1.0, 1.0)])
def test_beta_mean_and_variance(a, b):
    lam = BetaSampler(a, b, zero_share=0.0, seed=0).sample(20000)
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(lam.mean().item() - mean) < 0.01
    assert abs(lam.var().item() - var) < 0.01
    assert lam.min() >= 0 and lam.max() <= 1


def test_beta_forced_zeros():
    sampler = BetaSampler(2.0, 2.0, zero_share=1 / 6, seed=4)
    for batch_size in (1, 6, 13, 100):
        lam = sampler.sample(batch_size)
        # Beta(2, 2) hits exactly 0 with probability 0: only the forced zeros are zero.
        assert _zeros(lam) == math.ceil(batch_size / 6)


def test_fixed_sampler():
    lam = FixedSampler(0.3).sample(5)
    assert lam.dtype == torch.float32
    assert torch.equal(lam, torch.full((5,), 0.3))
    assert torch.equal(FixedSampler(0.0).sample(1), torch.zeros(1))


SAMPLER_CASES = [
    ("reference", {}),
    ("uniform", {}),
    ("beta", {"a": 2.0, "b": 3.0}),
    ("sandwich", {"zero_share": 0.25, "one_share": 0.25}),
    ("sandwich", {"values": [0.1, 0.2, 0.3]}),
]


@pytest.mark.parametrize("name,params", SAMPLER_CASES)
def test_same_seed_same_stream_different_seed_different(name, params):
    a = make_sampler(name, seed=7, **params)
    b = make_sampler(name, seed=7, **params)
    c = make_sampler(name, seed=8, **params)
    stream_a = [a.sample(32) for _ in range(3)]
    stream_b = [b.sample(32) for _ in range(3)]
    stream_c = [c.sample(32) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(stream_a, stream_b))
    assert not all(torch.equal(x, y) for x, y in zip(stream_a, stream_c))


@pytest.mark.parametrize("name,params", SAMPLER_CASES + [("fixed", {"value": 0.4})])
def test_state_dict_round_trip_continues_the_stream(name, params):
    original = make_sampler(name, seed=11, **params)
    original.sample(16)
    state = original.state_dict()
    expected = [original.sample(16) for _ in range(3)]

    resumed = make_sampler(name, seed=999, **params)  # a different seed: the state must win
    resumed.load_state_dict(state)
    assert all(torch.equal(x, resumed.sample(16)) for x in expected)


def test_sampler_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    UniformSampler(seed=5).sample(100)
    BetaSampler(1.0, 2.0).sample(100)
    ReferenceSampler().sample(100)
    assert torch.equal(torch.rand(3), before)


def test_load_state_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="ReferenceSampler"):
        UniformSampler().load_state_dict(ReferenceSampler().state_dict())


def test_make_sampler_names_and_types():
    assert sampler_names() == ["beta", "fixed", "reference", "sandwich", "uniform"]
    assert isinstance(make_sampler("reference"), ReferenceSampler)
    assert make_sampler("reference", values=(0, 1)).values == (0.0, 1.0)
    assert isinstance(make_sampler("fixed", value=1.0), FixedSampler)


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("gaussian", {}, "gaussian"),
        ("reference", {"values": (0.0, 1.5)}, r"\[0, 1\]"),
        ("reference", {"values": (0.0, -0.1)}, r"\[0, 1\]"),
        ("reference", {"values": ()}, "at least one"),
        ("reference", {"values": (0.0, 0.5, 0.5)}, "distinct"),
        ("uniform", {"zero_share": 1.2}, "zero_share"),
        ("uniform", {"zero_share": -0.1}, "zero_share"),
        ("uniform", {"low": 0.8, "high": 0.2}, "low"),
        ("uniform", {"high": 2.0}, "high"),
        ("beta", {"a": 0.0, "b": 1.0}, "a"),
        ("beta", {"a": 1.0, "b": -2.0}, "b"),
        ("beta", {"a": 1.0}, "'b'"),
        ("beta", {"a": 1.0, "b": 1.0, "zero_share": 2.0}, "zero_share"),
        ("fixed", {"value": 1.1}, r"\[0, 1\]"),
        ("fixed", {}, "'value'"),
        ("uniform", {"alpha": 1.0}, "alpha"),
    ],
)
def test_bad_parameters_raise(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(name, **params)


def test_bad_batch_size_raises():
    with pytest.raises(ValueError, match="batch_size"):
        UniformSampler().sample(0)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 6, 128, 129])
def test_sandwich_forces_both_ends_in_every_batch(batch_size):
    sampler = SandwichSampler(zero_share=0.25, one_share=1 / 3, seed=2)
    for _ in range(5):
        lam = sampler.sample(batch_size)
        n_zero = math.ceil(batch_size * 0.25)
        n_one = min(batch_size - n_zero, math.ceil(round(batch_size / 3, 9)))
        assert int((lam == 0).sum()) >= n_zero
        assert int((lam == 1).sum()) >= n_one
        interior = lam[(lam > 0) & (lam < 1)]
        assert interior.numel() + n_zero + n_one >= batch_size - 2  # U(0, 1) hits neither end


def test_sandwich_interior_is_uniform_or_the_given_set():
    continuous = SandwichSampler(zero_share=0.0, one_share=0.0, low=0.2, high=0.6, seed=0).sample(20000)
    assert float(continuous.min()) >= 0.2 and float(continuous.max()) <= 0.6
    assert abs(float(continuous.mean()) - 0.4) < 0.005
    discrete = SandwichSampler(zero_share=0.1, one_share=0.1, values=[0.1, 0.3], seed=0)
    lam = discrete.sample(1000)
    assert torch.unique(lam).tolist() == pytest.approx([0.0, 0.1, 0.3, 1.0])
    assert discrete.discrete_values == (0.0, 0.1, 0.3, 1.0)
    assert SandwichSampler().discrete_values is None


@pytest.mark.parametrize("params,message", [
    ({"zero_share": 0.6, "one_share": 0.5}, "at most 1"),
    ({"one_share": 1.5}, r"\[0, 1\]"),
    ({"values": []}, "at least one"),
    ({"low": 0.8, "high": 0.2}, "must not exceed"),
])
def test_sandwich_refuses_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        SandwichSampler(**params)


def test_discrete_values_say_what_a_categorical_encoding_must_know():
    assert ReferenceSampler(values=(0.0, 0.4, 1.0)).discrete_values == (0.0, 0.4, 1.0)
    assert FixedSampler(0.3).discrete_values == (0.3,)
    assert UniformSampler().discrete_values is None
    assert BetaSampler(2.0, 1.0).discrete_values is None
