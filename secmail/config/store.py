"""The C{[store]} table: the database and the master key that seals its rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from secmail.config._base import ConfigError, NodeOnly, Schema, as_nonempty


@dataclass(frozen=True)
class StoreSettings:
    database: str
    master_key_file: str
    master_key_generated: bool


def _database(value: Any) -> str:
    text = as_nonempty(value).strip()
    if not (text.startswith("sqlite:") or text.startswith(("postgresql://", "postgres://"))):
        raise ValueError(f'{text!r} must be "sqlite:PATH" or "postgresql://..."')
    if text.startswith("sqlite:") and not text[len("sqlite:") :]:
        raise ValueError(
            "sqlite: needs a file path, such as sqlite:/var/lib/secmail/secmail.sqlite"
        )
    return text


#: Both are node settings: a node reads them before it can reach the database.
SCHEMA: Schema = {
    "store": {"database": NodeOnly(_database), "master_key_file": NodeOnly(as_nonempty)}
}


def build_store(values: dict[str, Any], data_dir: str) -> StoreSettings:
    """The section from its checked keys; both default to files in the data directory."""
    key_file = values.get("master_key_file")
    if key_file is not None and not os.path.isfile(key_file):
        raise ConfigError(
            f"store.master_key_file: file {key_file!r} not found "
            "(create one with: secmail keys generate FILE)"
        )
    return StoreSettings(
        database=values.get("database", "sqlite:" + os.path.join(data_dir, "secmail.sqlite")),
        master_key_file=os.path.abspath(key_file or os.path.join(data_dir, "master.key")),
        master_key_generated=key_file is None,
    )
