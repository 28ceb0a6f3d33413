"""Tests for cheers_pl.registry: every section has a schema, and a missing one is an error."""

import pytest

from cheers_pl.callbacks import CALLBACKS
from cheers_pl.config import compose
from cheers_pl.model.cheers import CheersConfig
from cheers_pl.registry import CALLBACK_SCHEMAS, MODEL_SCHEMA, STAGE_SCHEMAS, callback_schema, stage_schema
from cheers_pl.stage import STAGES


def test_every_stage_and_callback_has_its_schema() -> None:
    assert MODEL_SCHEMA is CheersConfig
    assert STAGE_SCHEMAS == {name: entry[0] for name, entry in STAGES.items()}
    assert CALLBACK_SCHEMAS == {name: entry[0] for name, entry in CALLBACKS.items()}
    assert stage_schema("align") is STAGES["align"][0]


def test_a_missing_schema_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"stage.name='nope' is not a registered stage; registered: \['align'"):
        stage_schema("nope")
    with pytest.raises(ValueError, match=r"callbacks.nope: not a registered callback"):
        callback_schema("nope")
    with pytest.raises(ValueError, match=r"callbacks.nope: not a registered callback"):
        compose("tiny_align", ["callbacks.nope.x=1"])
