"""The settings of a serving process: :class:`Exploration` (how decisions are drawn from a
bundle) and :class:`ServerConfig` (everything ``create_server`` needs).

Both are validated pydantic models (:class:`cvm_rl.config.ConfigModel`): a config that exists
is a valid one, and a refused value raises a ``ValueError`` whose
:func:`cvm_rl.config.error_message` names the field. Whether an exploration fits a given
bundle is checked when the bundle is loaded (:class:`server.model.ServingModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, ValidationInfo, field_validator, model_validator

from cvm_rl.bundle_paths import run_or_bundle_dir
from cvm_rl.config import ConfigModel
from cvm_rl.logs.schema import Durability, ExplorationMode, LearningMode, values
from cvm_rl.policies.base import check_number

DEFAULT_MAX_BATCH_ROWS = 5_000
"""At most this many rows per DecideBatch: the largest answer then fits the 4 MiB that gRPC
clients accept by default (Python, Java, Go, Node), in either form, with probabilities and
ids of the longest allowed ASCII length (``tests/test_server.py`` measures it)."""
CLIENT_DEFAULT_RECEIVE_BYTES = 4 * 1024 * 1024
"""gRPC clients' default receive limit (grpc core, grpc-java, grpc-go, @grpc/grpc-js)."""
DEFAULT_MAX_RECEIVE_BYTES = 16 * 1024 * 1024
"""Largest request the server reads (a bigger one is RESOURCE_EXHAUSTED, from the transport):
room for the largest allowed batch (about 2.5 MB with the longest ids) and its eligibilities."""
DEFAULT_MAX_SEND_BYTES = 64 * 1024 * 1024
"""Largest answer the server sends; clients' own receive limit is what usually binds."""


class Exploration(ConfigModel):
    """How the served distribution is made from the bundle, and whose actions are executed.

    - ``policy``: the bundle's own distribution (``param`` unused, 0).
    - ``epsilon``: the bundle's greedy action with probability 1 - ``param``, else uniform
      over the eligible actions.
    - ``softmax``: softmax of the bundle's scores (logits or Q-values) at temperature
      ``param``; needs a bundle with scores (kind ``mlp``).

    ``learning_mode`` ``online`` executes the policy's draw; ``apprentice`` executes the
    caller's baseline action (propensity 1) and logs the policy's draw beside it.
    """

    model_config = ConfigDict(frozen=True)

    mode: ExplorationMode = ExplorationMode.POLICY
    param: float = 0.0
    learning_mode: LearningMode = LearningMode.ONLINE

    # Before pydantic's enum check, so that a bad mode reads as it always has.
    @field_validator("mode", mode="before")
    @classmethod
    def _known_mode(cls, value: Any) -> Any:
        if value not in values(ExplorationMode):
            raise ValueError(
                f"exploration mode must be one of {values(ExplorationMode)}, got {value!r}"
            )
        return value

    @field_validator("learning_mode", mode="before")
    @classmethod
    def _known_learning_mode(cls, value: Any) -> Any:
        if value not in values(LearningMode):
            raise ValueError(f"learning_mode must be one of {values(LearningMode)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _param_fits_mode(self) -> Exploration:
        if self.mode == ExplorationMode.EPSILON:
            check_number("epsilon", self.param, low=0.0, high=1.0, strict=False)
        elif self.mode == ExplorationMode.SOFTMAX:
            check_number("temperature", self.param, low=0.0, strict=True)
        elif self.param != 0.0:
            raise ValueError(f"exploration mode 'policy' takes no parameter, got {self.param!r}")
        return self


class ServerConfig(ConfigModel):
    """Everything a serving process needs; the CLI and the tests build one of these."""

    bundle: Path
    log_path: Path | None = Path("cvm-decisions.db")
    exploration: Exploration = Exploration()
    auth_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES
    max_send_bytes: int = DEFAULT_MAX_SEND_BYTES
    # LoadBundle loads bundles under this directory only (symlinks and `..` resolved first);
    # None: the directory holding the start bundle (or its run directory).
    bundle_root: Path | None = None
    # The full distribution per decision (200 bytes at 25 actions); the propensity of the
    # served action is always logged, and the distribution can be recomputed from the logged
    # features with the bundle, so high-volume deployments may turn this off.
    log_probabilities: bool = True
    synchronous: Durability = Durability.NORMAL
    admin: bool = True
    metrics_port: int | None = None
    grace_s: float = 5.0
    reuse_port: bool = False
    # Workers after the first adopt the activation the parent recorded instead of adding one.
    adopt_latest: bool = False

    @field_validator("auth_token")
    @classmethod
    def _token_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("auth_token must not be empty (omit it to turn auth off)")
        return value

    @field_validator("max_batch_rows")
    @classmethod
    def _positive_rows(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {value}")
        return value

    @field_validator("max_receive_bytes", "max_send_bytes")
    @classmethod
    def _message_bytes(cls, value: int, info: ValidationInfo) -> int:
        if not 1024 <= value < 2**31:
            raise ValueError(f"{info.field_name} must be in [1024, 2**31 - 1], got {value}")
        return value

    @property
    def loadable_root(self) -> Path:
        """The resolved directory LoadBundle is confined to."""
        if self.bundle_root is not None:
            return self.bundle_root.resolve()
        return run_or_bundle_dir(self.bundle.resolve()).parent

    @field_validator("grace_s")
    @classmethod
    def _non_negative_grace(cls, value: float) -> float:
        if not value >= 0:
            raise ValueError(f"grace_s must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self
