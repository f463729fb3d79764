"""One registry mechanism (oat.registry.Registry) behind models, datasets, objectives, λ samplers
and λ encodings; the checks are parametrised over every registry and every registered name, so a
newly registered piece is tested without editing a list here."""

import inspect

import pytest

from oat.conditioning import ENCODERS
from oat.datasets.registry import DATASETS
from oat.models.registry import MODELS
from oat.objectives import OBJECTIVES
from oat.registry import Registry
from oat.sampling import SAMPLERS

REGISTRIES = {"model": MODELS, "dataset": DATASETS, "objective": OBJECTIVES, "λ sampler": SAMPLERS,
              "λ encoding": ENCODERS}
EVERY_ENTRY = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()]


def test_every_piece_is_registered_once_under_the_kind_it_reports():
    assert {kind: registry.kind for kind, registry in REGISTRIES.items()} == {k: k for k in REGISTRIES}
    assert all(len(registry.names()) >= 2 for registry in REGISTRIES.values())
    assert len(EVERY_ENTRY) == len(set(EVERY_ENTRY))


@pytest.mark.parametrize("kind, name", EVERY_ENTRY)
def test_each_entry_is_found_refuses_a_second_registration_and_checks_its_options(kind, name):
    registry = REGISTRIES[kind]
    builder = registry.get(name)
    assert callable(builder) and name in registry
    with pytest.raises(ValueError, match=f"{kind} '{name}' is registered twice"):
        registry.register(name, builder)
    assert registry.get(name) is builder  # the refused registration changed nothing
    with pytest.raises(ValueError, match=f"{kind} '{name}' has no option 'no_such_option'; it takes "):
        registry.check_options(name, {"no_such_option"})
    # A near miss of the name is answered with the name itself.
    with pytest.raises(ValueError, match=rf"unknown {kind} '{name}x' \(did you mean '{name}'\?\)"):
        registry.get(name + "x")


def test_options_come_from_the_builders_signature():
    registry = Registry("widget")

    @registry.register("round")
    def round_widget(size, *, radius=1.0, colour="red"):
        return (size, radius, colour)

    registry.register("plain", lambda: None)
    assert registry.names() == ["plain", "round"]
    assert registry.options("round") == {"size": inspect.Parameter.empty, "radius": 1.0, "colour": "red"}
    assert registry.options("round", skip=("size",)) == {"radius": 1.0, "colour": "red"}
    registry.check_options("round", {"size", "colour"})
    registry.check_options("round", {"colour", "shine"}, skip=("size",), extra=("shine",))
    with pytest.raises(ValueError, match=r"^widget 'round' has no option 'radios'; it takes colour, radius, size$"):
        registry.check_options("round", {"size", "radios"})
    with pytest.raises(ValueError, match=r"^widget 'round' needs option 'size'$"):
        registry.check_options("round", {"radius"})
    with pytest.raises(ValueError, match=r"^widget 'plain' has no option 'size'; it takes none$"):
        registry.check_options("plain", {"size"})
    with pytest.raises(ValueError, match=r"^unknown widget 'square'; known: plain, round$"):
        registry.get("square")


def test_a_bug_inside_a_builder_keeps_its_traceback():
    """Options are checked against the signature before the call; what the builder raises itself
    is not turned into an option error."""
    from oat import models

    class Broken:
        def __init__(self, num_classes=10, conditioning=None, in_channels=1):
            raise TypeError("a bug")

    MODELS.register("broken_for_test", Broken)
    try:
        with pytest.raises(TypeError, match="^a bug$"):
            models.create("broken_for_test", conditioned=False)
        with pytest.raises(ValueError, match="model 'broken_for_test' has no option 'width'"):
            models.create("broken_for_test", conditioned=False, width=3)
    finally:
        MODELS._items.pop("broken_for_test")
