"""Training work in multiply-accumulates (oat.passes.forward_macs, oat.passes.work)."""

import pytest
import torch.nn as nn

from oat import models
from oat.conditioning import FiLM
from oat.passes import forward_macs, work

DIGITS_28 = (1, 28, 28)
# small_cnn on 28×28: 3×3 convolutions, padding 1, pooled to 14×14 after the second and to 7×7 after the fourth.
CONVS = [1 * 32 * 9 * 28 * 28,  # 225,792
         32 * 32 * 9 * 28 * 28,  # 7,225,344
         32 * 64 * 9 * 14 * 14,  # 3,612,672
         64 * 64 * 9 * 14 * 14]  # 7,225,344
LINEARS = [64 * 7 * 7 * 200, 200 * 200, 200 * 10]  # 627,200 + 40,000 + 2,000


def test_forward_macs_of_the_small_cnn_match_the_hand_count():
    net = models.create("small_cnn", conditioned=False, input_shape=DIGITS_28)
    assert sum(CONVS) + sum(LINEARS) == 18_958_352
    assert forward_macs(net, DIGITS_28) == 18_958_352
    assert net.training  # its mode is restored
    assert forward_macs(net.eval(), DIGITS_28) == 18_958_352 and not net.training


def test_the_conditioned_twin_costs_its_film_mlps_more():
    plain = models.create("small_cnn", conditioned=False, input_shape=DIGITS_28)
    twin = models.create("small_cnn", conditioned=True, input_shape=DIGITS_28)
    film = sum(layer.in_features * layer.out_features for module in twin.modules() if isinstance(module, FiLM)
               for layer in module.mlp if isinstance(layer, nn.Linear))
    assert film > 0
    assert forward_macs(twin, DIGITS_28) == forward_macs(plain, DIGITS_28) + film
    assert forward_macs(twin, DIGITS_28, lam=0.0) == forward_macs(twin, DIGITS_28, lam=1.0)  # routing costs nothing


def test_doubling_the_channels_about_quadruples_the_convolutions():
    wide = models.create("small_cnn", conditioned=False, input_shape=DIGITS_28, channels=(64, 128))
    convs = forward_macs(wide, DIGITS_28) - (128 * 7 * 7 * 200 + 200 * 200 + 200 * 10)
    assert convs == 2 * CONVS[0] + 4 * sum(CONVS[1:])  # the first layer's input stays one channel
    assert convs / sum(CONVS) == pytest.approx(4, rel=0.01)


def test_grouped_convolutions_and_modules_without_lambda():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(8 * 5 * 5, 3))
    assert forward_macs(net, (4, 5, 5)) == 8 * 25 * 2 * 9 + 200 * 3


def test_work_weighs_a_full_backward_twice():
    counts = {"forward": 10, "backward_input": 7, "backward_full": 3}
    assert work(counts, 100) == 100 * (10 + 7 + 2 * 3)
    assert work({"forward": 5}, 2) == 10  # kinds not counted are zero
    assert work(None, 100) is None and work({}, 100) is None and work(counts, None) is None
