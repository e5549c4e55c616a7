"""pack_key (shared/packing.py): which specs may share a pack. Torch-free, as the API."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.packing import pack_key
from shared.schemas import CganSpec, ClassifierSpec, GanSpec

BASE = ClassifierSpec(dataset="mnist-5k", device="cpu")


@pytest.mark.parametrize(
    "update",
    [
        {"lr": 3e-4},
        {"seed": 7},
        {"epochs": 3},
        {"max_steps": 50},
        {"log_every": 1, "checkpoint_every": 7, "sample_every": 9},
        {"name": "trial 3"},
    ],
)
def test_trials_differing_in_their_own_settings_share_a_key(update: dict[str, object]) -> None:
    key = pack_key(BASE)
    assert key is not None
    assert pack_key(BASE.model_copy(update=update)) == key


@pytest.mark.parametrize(
    "update",
    [
        {"model": "book_mlp"},
        {"dataset": "fake"},
        {"batch_size": 64},
        {"resize": 32},
        {"crop": 24},
        {"device": "cuda"},
    ],
)
def test_what_shapes_the_model_array_splits_packs(update: dict[str, object]) -> None:
    assert pack_key(BASE.model_copy(update=update)) not in (None, pack_key(BASE))


def test_tasks_never_share_a_key() -> None:
    gan, cgan = GanSpec(device="cpu"), CganSpec(device="cpu")
    keys = {pack_key(BASE), pack_key(gan), pack_key(cgan)}
    assert None not in keys and len(keys) == 3


def test_one_side_and_its_pair_are_one_shape() -> None:
    assert pack_key(BASE.model_copy(update={"resize": 28})) == pack_key(
        BASE.model_copy(update={"resize": (28, 28)})
    )


@pytest.mark.parametrize("flag", ["amp", "channels_last", "compile"])
def test_speed_flags_are_never_packed(flag: str) -> None:
    assert pack_key(BASE.model_copy(update={flag: True})) is None


def test_book_mode_is_never_packed() -> None:
    assert pack_key(ClassifierSpec(mode="book")) is None
    assert pack_key(GanSpec(mode="book", model="book_mlp_gan")) is None


def test_unknown_fields_are_part_of_the_key() -> None:
    """A field this module does not know (here: GanSpec's activation) never mixes in a pack."""
    a = GanSpec(model="book_conv_gan", device="cpu")
    b = GanSpec(model="book_conv_gan", device="cpu", activation="gelu")
    assert pack_key(a) != pack_key(b)


def test_the_pack_gather_wait_stays_well_inside_the_lease() -> None:
    """A trial's lease is not renewed while its worker gathers the pack: the wait must end
    long before the lease could expire."""
    with pytest.raises(ValidationError, match="PACK_GATHER_S"):
        Settings(PACK_GATHER_S=1.0, LEASE_TTL_S=3)
    assert Settings(PACK_GATHER_S=0.5, LEASE_TTL_S=3).PACK_GATHER_S == 0.5
