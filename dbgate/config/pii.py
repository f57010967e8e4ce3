"""PII tokenization of everything the agent receives, and its keys (docs/pii.md)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dbgate.config.base import Strict


class PiiKeyConfig(Strict):
    """One tokenization key (see docs/pii.md, "Keys and rotation")."""

    id: str = Field(min_length=1)
    secret: str | None = Field(None, repr=False)  # base64:... or hex:...; may be ${ENV}
    secret_env: str | None = None  # read the secret from this environment variable
    secret_file: Path | None = None  # read the secret from this file
    fingerprint: str | None = None  # as printed by `dbgate pii keygen`: guards against a wrong key
    retire_after: datetime | None = None  # earlier keys only: resolve-only until then


class PiiConfig(Strict):
    """PII tokenization of everything the agent receives (docs/pii.md)."""

    enabled: bool = True
    catalog: Path | None = None  # None: the shipped rules/pii.yaml
    # hashed: keyed BLAKE2b, fastest, resolves tokens this process issued;
    # reversible: AES-SIV, resolves anywhere with the key (dbgate detokenize)
    mode: Literal["hashed", "reversible"] = "hashed"
    keys: list[PiiKeyConfig] = Field(default_factory=list)  # empty: DBGATE_PII_KEY
    # Output whose provenance lineage cannot decide: tokenize it whole, hold the
    # statement for approval, or run the content detectors over it.
    unknown: Literal["tokenize", "hold", "detect"] = "tokenize"
    detect_clean_text: bool = False  # also run the detectors over text that lineage calls clean
    raise_messages: Literal["detect", "tokenize"] = "detect"
    notification_payloads: Literal["tokenize", "detect", "pass"] = "tokenize"
    notification_channels: dict[str, Literal["tokenize", "detect", "pass"]] = Field(
        default_factory=dict
    )
    exempt_identities: list[str] = Field(default_factory=list)  # see raw values (recorded)
    exempt_groups: list[str] = Field(default_factory=list)
    max_reversible_bytes: int = Field(4096, ge=16)  # longer values get hashed tokens
    # hashed mode: tokens that resolve (a tenth per generation, see dbgate/pii/issued.py)
    token_cache_entries: int = Field(200_000, ge=0, le=10 * 2**40)

    @model_validator(mode="after")
    def _unique_key_ids(self) -> PiiConfig:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"pii.keys: key ids must be unique, got {ids}")
        return self
