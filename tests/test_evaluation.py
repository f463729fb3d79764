"""evaluate(): the cascade measures the same worst case for less, several λ in one batch give the
same figures as one λ at a time, and an example's attack does not depend on which other examples
share its batch (PGD, CW and APGD alike)."""

import pytest
import torch
import torch.nn.functional as F

import oat
from oat import experiment, models
from oat.attacks import APGD, CW, PGD, autoattack
from oat.datasets.base import dataset_tensors, to_unit
from oat.passes import PassCounter


@pytest.fixture(scope="module")
def digits():
    return oat.datasets.load("digits")


@pytest.fixture(scope="module")
def model(digits):
    """A small conditioned CNN trained clean for a few epochs (~95% of test digits right at λ = 0 and 1)."""
    torch.manual_seed(0)
    net = models.create("small_cnn", input_shape=(1, 8, 8), conditioned=True, channels=(8, 16))
    images, labels = dataset_tensors(digits.train)
    x = to_unit(images)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            index = order[start:start + 64]
            lam = (torch.rand(len(index)) < 0.5).float()
            loss = F.cross_entropy(net(x[index], lam), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


ATTACKS = ["fgsm", "pgd-5", "cw-5x2"]


def test_the_cascade_measures_the_same_worst_case_with_fewer_passes(model, digits):
    counter = PassCounter().attach(model)
    full = oat.evaluate(model, digits, [0.0, 1.0], ATTACKS, eps=0.1, n=200, seed=3)
    full_passes = counter.counts()["forward"]
    cascaded = oat.evaluate(model, digits, [0.0, 1.0], ATTACKS, eps=0.1, n=200, seed=3, cascade=True)
    cascaded_passes = counter.counts()["forward"] - full_passes
    counter.detach()
    assert (full["cascade"], cascaded["cascade"]) == (False, True)
    for a, b in zip(full["points"], cascaded["points"]):
        assert a["clean"] > 0.8
        assert a["robust_worst"] == b["robust_worst"]
        for key in ("clean", "robust_worst"):  # each attack's own bits are cumulative in a cascade
            assert a["per_example"][key] == b["per_example"][key]
        assert a["robust"]["fgsm"] == b["robust"]["fgsm"]  # the first attack saw every example
        # later attacks' figures are cumulative: non-increasing, the last one the worst case
        figures = [b["robust"][name] for name in ATTACKS]
        assert figures == sorted(figures, reverse=True) and figures[-1] == b["robust_worst"]
        assert all(b["robust"][name] <= a["robust"][name] for name in ATTACKS)
    assert 0 < cascaded["points"][0]["robust_worst"] < cascaded["points"][0]["clean"]  # the attacks bite
    assert cascaded_passes < 0.8 * full_passes


def test_the_cascade_is_part_of_the_protocol(model, digits):
    from oat.protocol import ProtocolMismatch, check_same_protocol

    runs = [oat.evaluate(model, digits, [0.0], ["fgsm", "pgd-2"], eps=0.1, n=50, cascade=c) for c in (False, True)]
    with pytest.raises(ProtocolMismatch, match="cascade is False in a but True in b"):
        check_same_protocol([("a", runs[0]), ("b", runs[1])])
    old = {k: v for k, v in runs[0].items() if k != "cascade"}  # an eval.json from before the cascade
    assert check_same_protocol([("old", old), ("new", runs[0])]) == []


@pytest.mark.parametrize("attack", [PGD(0.1, steps=3, restarts=2, seed=5), CW(0.1, steps=3, seed=5),
                                    APGD(0.1, steps=10, restarts=2, seed=5),
                                    APGD(0.1, loss="dlr-targeted", steps=10, target_classes=3, seed=5)])
def test_an_examples_attack_does_not_depend_on_its_batch(model, digits, attack):
    images, labels = dataset_tensors(digits.test)
    x, y = to_unit(images[:40]), labels[:40]
    ids = torch.arange(100, 140)
    together = attack(model, x, y, 1.0, example_ids=ids)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    for part in (order[:13], order[13:]):  # other batches, other orders, same examples
        assert torch.equal(attack(model, x[part], y[part], 1.0, example_ids=ids[part]), together[part])
    other_ids = attack(model, x, y, 1.0, example_ids=ids + 1000)
    assert not torch.equal(other_ids, together)  # the id, not the position, picks the start
    assert (together - x).abs().max() <= 0.1 + 1e-6 and together.min() >= 0 and together.max() <= 1


def test_example_ids_must_name_one_id_per_example_on_the_cpu(model):
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="example_ids must be a CPU tensor of shape \\[4\\]"):
        PGD(0.1, steps=1, seed=0)(model, x, y, 0.0, example_ids=torch.arange(3))


@pytest.mark.parametrize("cascade", [False, True])
def test_several_lambdas_in_one_batch_give_the_figures_of_one_at_a_time(model, digits, cascade):
    common = dict(eps=0.1, n=120, seed=1, batch_size=50, cascade=cascade)  # batches straddle two λ
    attacks = ["fgsm", "pgd-3", "apgd-ce"]
    apart = oat.evaluate(model, digits, [0.0, 0.5, 1.0], attacks, mix_lambdas=False, **common)
    mixed = oat.evaluate(model, digits, [0.0, 0.5, 1.0], attacks, mix_lambdas=True, **common)
    assert [p["per_example"] for p in apart["points"]] == [p["per_example"] for p in mixed["points"]]
    assert [p["robust"] for p in apart["points"]] == [p["robust"] for p in mixed["points"]]
    assert 0 < mixed["points"][2]["robust_worst"] < mixed["points"][2]["robust"]["fgsm"]  # the attacks bite


def test_apgd_is_as_strong_as_the_packages(model, digits):
    images, labels = dataset_tensors(digits.test)
    x, y = to_unit(images[:80]), labels[:80]
    ours = APGD(0.1, seed=0)(model, x, y, 1.0, example_ids=torch.arange(80))
    with torch.no_grad():
        robust = model(ours, 1.0).argmax(1) == y
    package = autoattack(model, x, y, 1.0, eps=0.1, version="custom", attacks=["apgd-ce"]).robust
    assert 0 < int(package.sum()) < 80  # the attack bites and leaves some
    assert abs(int(robust.sum()) - int(package.sum())) <= 2  # the same attack from other random starts
    assert (ours - x).abs().max() <= 0.1 + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    assert torch.equal(ours[robust], x[robust]) and not torch.equal(ours[~robust], x[~robust])  # unbroken: x itself


def test_apgd_takes_one_lambda_per_example(model, digits):
    images, labels = dataset_tensors(digits.test)
    x, y, ids = to_unit(images[:30]), labels[:30], torch.arange(30)
    lam = torch.tensor([0.0, 1.0] * 15)
    mixed = APGD(0.1, steps=10, seed=2)(model, x, y, lam, example_ids=ids)
    for value in (0.0, 1.0):
        part = (lam == value).nonzero().squeeze(1)
        assert torch.equal(APGD(0.1, steps=10, seed=2)(model, x[part], y[part], value, example_ids=ids[part]),
                           mixed[part])


def test_the_datasets_input_bounds_bind_every_attack(model, digits, monkeypatch):
    """DatasetInfo.bounds reaches the attacks: a box other than [0, 1] changes PGD's iterates (the
    clamp moves), and the APGD family, whose package clips to [0, 1], is refused for it."""
    import dataclasses

    from oat.attacks.names import AttackSpec

    wide = dataclasses.replace(digits, info=dataclasses.replace(digits.info, bounds=(-1.0, 2.0)))
    seen = []
    original = AttackSpec.build
    monkeypatch.setattr(AttackSpec, "build", lambda *a: seen.append(original(*a)) or seen[-1])
    oat.evaluate(model, wide, [1.0], ["fgsm", "pgd-2"], eps=0.1, n=20)
    assert [attack.bounds for attacks in seen for attack in attacks] == [(-1.0, 2.0), (-1.0, 2.0)]
    with pytest.raises(ValueError, match=r"apgd-ce needs inputs in \[0, 1\].*inputs are in \[-1.0, 2.0\]"):
        oat.evaluate(model, wide, [1.0], ["apgd-ce"], eps=0.1, n=20)
    unbounded = dataclasses.replace(digits, info=dataclasses.replace(digits.info, bounds=None))
    with pytest.raises(ValueError, match="autoattack needs inputs in .* inputs are unbounded"):
        oat.evaluate(model, unbounded, [1.0], ["autoattack"], eps=0.1, n=20)


def test_training_attacks_stay_in_the_datasets_box():
    from oat.objectives import make_objective

    assert make_objective("pgd", eps=0.1, bounds=None).attack.bounds is None
    assert make_objective("trades", eps=0.1, bounds=(-1.0, 1.0)).attack.bounds == (-1.0, 1.0)


def test_the_training_loop_hands_its_attack_the_datasets_box(tmp_path, monkeypatch):
    import dataclasses

    from oat import trainer
    from oat.config import from_dict
    from oat.distributed import DistEnv

    load = experiment.datasets.load

    def wide(*args, **kwargs):
        splits = load(*args, **kwargs)
        return dataclasses.replace(splits, info=dataclasses.replace(splits.info, bounds=(-1.0, 2.0)))

    monkeypatch.setattr(experiment.datasets, "load", wide)
    config = from_dict({"data": {"name": "digits"}, "model": {"name": "small_cnn", "options": {"channels": [4, 8]}},
                        "train": {"epochs": 1, "batch_size": 64}})
    run = trainer.setup_training(experiment.build(config), tmp_path / "run", None, torch.device("cpu"), DistEnv())
    assert run.objective.attack.bounds == (-1.0, 2.0)
