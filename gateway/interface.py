"""What the views hand to a predictor and get back: plain data, no Flask, no gRPC.

`Predictor` is the interface routes.py depends on; predictor.py implements it against the model
server, and tests may pass a fake that implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.deadline import Deadline
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.client import VersionMetadata


@dataclass(frozen=True)
class ImageInput:
    """One image to classify: a URL to fetch or bytes already in hand."""

    url: str | None = None
    data: bytes | None = None
    pixels: bool = False  # `data` is float32 RGB pixels for a pixel signature (the /v2 API)


@dataclass(frozen=True)
class PredictRequest:
    """A parsed prediction request."""

    model: str
    images: tuple[ImageInput, ...]
    version: int | None = None
    label: str | None = None
    top_k: int = 5
    request_id: str = ""
    client: str = ""  # fairness.client_identity: whose share its fetches and queued images use
    deadline: Deadline | None = None  # the request's; None: only the per-stage limits apply
    client_key: str | None = None  # rollouts: picks the client's bucket; None: a random draw
    signature: str = ""  # the signature to call; "" is the configured one (the /v2 API picks)


@dataclass(frozen=True)
class Score:
    label: str
    class_id: int
    score: float


@dataclass
class ItemResult:
    """One image's outcome: its top-k, or the error that stopped it."""

    predictions: list[Score] | None = None
    error: GatewayError | None = None
    fetch_ms: float = 0.0
    digest: bytes | None = None  # SHA-256 of the image bytes, when the answer cache is on
    cached: bool = False  # answered from the answer cache


@dataclass
class PredictResult:
    model: str
    version: int | None
    items: list[ItemResult]
    fetch_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    cache: str = ""  # the answer cache: hit, miss or partial (a batch of both); "" when off


@dataclass(frozen=True)
class VersionInfo:
    version: int
    state: str
    error: str = ""


@dataclass(frozen=True)
class LabelMove:
    """A label models.config has moved that the model server has not applied yet: `?label=` is
    answered by `serving` (None: not at all yet) until it answers by `target`."""

    serving: int | None
    target: int


@dataclass
class ModelInfo:
    """A model as /v1/models describes it; `signature` only in the single-model view, with the
    version it was read from (the latest). `labels` is where models.config points each label;
    `label_moves` the ones the model server does not answer from there yet."""

    name: str
    versions: list[VersionInfo]
    labels: dict[str, int]
    signature: dict[str, Any] | None = None
    num_classes: int | None = None
    signature_version: int | None = None
    label_moves: dict[str, LabelMove] = field(default_factory=dict)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    models: dict[str, str]


class Predictor(Protocol):
    """The work behind the routes."""

    def predict(self, request: PredictRequest) -> PredictResult: ...

    def list_models(self, request_id: str = "") -> list[ModelInfo]: ...

    def describe(self, model: str, request_id: str = "") -> ModelInfo: ...

    def version_metadata(self, request: PredictRequest) -> VersionMetadata: ...

    def readiness(self) -> Readiness: ...

    def known_models(self) -> set[str]: ...

    def close(self) -> None: ...
