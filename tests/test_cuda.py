"""The GPU path: a training step that never waits for the device, and the CPU routing it relies on.

Tests marked ``cuda`` run only where CUDA is present (they skip, saying so, on a CPU machine); the
routing tests run everywhere.
"""

import pytest
import torch
import torch.nn.functional as F

from oat import models
from oat.conditioning import Conditioning
from oat.config import from_dict
from oat.distributed import DistEnv
from oat.objectives import make_objective
from oat.progress import Progress
from oat.experiment import build
from oat.trainer import setup_training, train_one_epoch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_routing_from_the_host_copy_is_the_routing_from_the_device_tensor():
    lam = torch.tensor([0.0, 0.3, 0.0, 1.0, 0.1, 0.0])
    code = torch.zeros(6, 4)
    for host in (None, lam.clone()):
        cond = Conditioning.build(lam, code, host=host)
        assert cond.n_clean == 3
        assert cond.order.tolist() == [0, 2, 5, 1, 3, 4] and cond.inverse[cond.order].tolist() == list(range(6))


def test_a_loss_routed_from_the_host_copy_equals_one_routed_from_the_device_tensor():
    """The trainer keeps λ on the CPU and the loss routes the dual BN from that copy; dropping the
    copy (routing from the inputs' tensor, as for a λ given on the device) changes nothing."""
    import copy

    torch.manual_seed(0)
    net = models.create("small_cnn", input_shape=(1, 8, 8), channels=(4, 8)).train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    lam = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0] * 2 + [0.0] * 4)
    objective = make_objective("pgd", eps=0.1, steps=2)
    batch = objective.generate(copy.deepcopy(net), x, y, lam)
    assert batch.host_lam is not None and torch.equal(batch.routing_lam_adv(), lam[lam > 0])
    results = []
    for host in (True, False):
        model = copy.deepcopy(net)
        if not host:
            batch.host_lam = batch.host_index = None
        loss = objective.loss(model, batch).loss.mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()],
                        [b.clone() for b in model.buffers()]))
    (loss_a, grads_a, buffers_a), (loss_b, grads_b, buffers_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a + buffers_a, grads_b + buffers_b))


@cuda
@pytest.mark.parametrize("conditioned", [True, False])
def test_a_cuda_training_epoch_never_synchronises_with_the_host(tmp_path, conditioned):
    """torch's sync debug mode turns every host synchronisation into an error: a step (λ, attack,
    loss, backward, update, metrics, the FOSC probe) must run without one. The loss check every
    ``LOSS_CHECK_EVERY`` steps and the epoch's end read the device on purpose; the timed epoch
    here is shorter than that, so the first sync must come at its end."""
    import numpy as np

    data = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, (2 * 64 * 6, 28, 28, 1), dtype=np.uint8), y=rng.integers(0, 10, 2 * 64 * 6))
    lambdas = ({"sampler": "reference"} if conditioned else {"sampler": "fixed", "params": {"value": 1.0}})
    config = from_dict({"data": {"name": "npz", "options": {"path": str(data), "test_fraction": 0.5, "eps": 0.1}},
                        "model": {"name": "small_cnn", "conditioned": conditioned}, "attack": {"steps": 3},
                        "lambdas": lambdas, "train": {"epochs": 1, "batch_size": 64, "device": "cuda"}})
    config.train.fosc_every = 1
    run = setup_training(build(config), tmp_path / "run", None, torch.device("cuda"), DistEnv())
    train_one_epoch(run, 0, Progress(1, enabled=False))  # warm-up: allocator, cuDNN autotuning
    torch.cuda.synchronize()
    steps = run.steps_per_epoch
    run.steps_per_epoch = min(steps, 5)  # under LOSS_CHECK_EVERY, and the epoch-end read comes after
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):  # only the epoch's final read may sync
            _steps_then_read(run)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _steps_then_read(run):
    """Run the steps (which must not sync), then the epoch-end loss check (which must)."""
    from oat import trainer

    original = trainer.EpochMetrics.first_non_finite
    reached = {}

    def first_non_finite(self):
        reached["end"] = True
        return original(self)

    trainer.EpochMetrics.first_non_finite = first_non_finite
    try:
        trainer.train_one_epoch(run, 1, Progress(1, enabled=False))
    except RuntimeError:
        assert reached.get("end"), "a step synchronised with the host before the epoch's end"
        raise
    finally:
        trainer.EpochMetrics.first_non_finite = original


@cuda
def test_cuda_attacks_and_evaluation_agree_with_the_cpu():
    from oat.attacks import PGD

    torch.manual_seed(0)
    net = models.create("small_cnn", input_shape=(1, 8, 8), channels=(4, 8)).eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    ids = torch.arange(32)
    cpu = PGD(0.1, steps=5, seed=0)(net, x, y, 0.5, example_ids=ids)
    gpu = PGD(0.1, steps=5, seed=0)(net.cuda(), x.cuda(), y.cuda(), 0.5, example_ids=ids).cpu()
    assert (cpu - gpu).abs().max() <= 0.1 * 2  # same starts; sign steps may part where gradients are tiny
    assert F.cross_entropy(net(gpu.cuda(), 0.5), y.cuda()) >= F.cross_entropy(net(x.cuda(), 0.5), y.cuda())


@cuda
def test_cuda_evaluation_mixes_lambdas_by_default_with_the_figures_of_one_at_a_time():
    import oat

    torch.manual_seed(0)
    net = models.create("small_cnn", input_shape=(1, 8, 8), channels=(4, 8)).cuda().eval()
    digits = oat.datasets.load("digits")
    common = dict(eps=0.1, n=60, seed=0, device="cuda", cascade=True)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 rounding would depend on the batch's kernels, not on oat
    try:
        mixed = oat.evaluate(net, digits, [0.0, 0.5, 1.0], ["pgd-3", "apgd-ce"], **common)  # the default on CUDA
        apart = oat.evaluate(net, digits, [0.0, 0.5, 1.0], ["pgd-3", "apgd-ce"], mix_lambdas=False, **common)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert [p["per_example"] for p in mixed["points"]] == [p["per_example"] for p in apart["points"]]
