"""The schema registry: which dataclass validates each config section, registered from the top (R6).

`cheers_pl.config` validates a composed experiment against these: `model` against `MODEL_SCHEMA`, `stage` against
the schema its `name` picks from `STAGE_SCHEMAS`, and each `callbacks.<key>` against `CALLBACK_SCHEMAS[key]`. The
CLI and `train` import this module (through `config`); a section without a schema is an error, never a silently
unvalidated section.
"""

from cheers_pl.callbacks import CALLBACK_CONFIGS
from cheers_pl.model.cheers import CheersConfig
from cheers_pl.stage import STAGE_CONFIGS

MODEL_SCHEMA: type = CheersConfig
STAGE_SCHEMAS: dict[str, type] = dict(STAGE_CONFIGS)
CALLBACK_SCHEMAS: dict[str, type] = dict(CALLBACK_CONFIGS)


def stage_schema(name: object) -> type:
    """The config dataclass of `stage.name`.

    Raises:
        ValueError: naming the value and the registered stages.
    """
    if name not in STAGE_SCHEMAS:
        raise ValueError(f"stage.name={name!r} is not a registered stage; registered: {sorted(STAGE_SCHEMAS)}")
    return STAGE_SCHEMAS[name]


def callback_schema(key: str) -> type:
    """The config dataclass of `callbacks.<key>`.

    Raises:
        ValueError: naming the key and the registered callbacks.
    """
    if key not in CALLBACK_SCHEMAS:
        raise ValueError(f"callbacks.{key}: not a registered callback; registered: {sorted(CALLBACK_SCHEMAS)}")
    return CALLBACK_SCHEMAS[key]
