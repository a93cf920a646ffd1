"""Requests to arrays: every ``cvm.v1`` request field checked against the serving model's
schema and catalog, with a message naming the field for anything refused.

Nothing here touches the log or the network: the servicers decide on the
:class:`ParsedRows` and store the :class:`~cvm_rl.logs.store.OutcomeRecord` lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from cvm_rl.bundle_paths import bundle_dir
from cvm_rl.logs.store import OutcomeRecord
from server.errors import RequestError, invalid, shown
from server.generated.cvm.v1 import decision_pb2 as pb
from server.ids import new_event_ids
from server.model import ServingModel

# Bounds of the request's strings (documented in decision.proto and the README).
MAX_EVENT_ID_LENGTH = 128
MAX_CUSTOMER_ID_LENGTH = 256
MAX_NAME_LENGTH = 128  # offer, channel and feature names
MAX_PATH_BYTES = 4095  # LoadBundle.path, UTF-8 (Linux's PATH_MAX less the final NUL)
MAX_PATH_COMPONENT_BYTES = 255  # each of its components (Linux's NAME_MAX)
# Timestamps: from the Unix epoch to the end of year 9999 (protobuf's own upper bound).
MAX_TIMESTAMP_SECONDS = 253_402_300_799
TIMESTAMP_RANGE = "[1970-01-01T00:00:00Z, 9999-12-31T23:59:59.999999999Z]"


def bounded(value: str, limit: int, field: str) -> str:
    """``value`` if it has at most ``limit`` characters, else INVALID_ARGUMENT naming ``field``."""
    if len(value) > limit:
        raise invalid(f"{field}: at most {limit} characters, got {len(value)}")
    return value


def bundle_path(path: str) -> str:
    """LoadBundle.path, checked for presence and length (a longer path cannot name a file)."""
    if not path:
        raise invalid("path: required (a bundle directory on the server)")
    size = len(path.encode())
    if size > MAX_PATH_BYTES:
        raise invalid(f"path: at most {MAX_PATH_BYTES} bytes (UTF-8), got {size}")
    longest = max(len(part.encode()) for part in path.split("/"))
    if longest > MAX_PATH_COMPONENT_BYTES:
        raise invalid(
            f"path: each component at most {MAX_PATH_COMPONENT_BYTES} bytes (UTF-8), "
            f"got one of {longest}"
        )
    return path


OUTSIDE_ROOT = (
    "path: not a directory under the server's bundle root (cvm serve --bundle-root); "
    "LoadBundle loads bundles from there only"
)


def confined_bundle(path: str, root: Path) -> Path:
    """LoadBundle.path as the bundle directory to load, confined to ``root`` (resolved).

    A relative path is taken from ``root``; symlinks and ``..`` are resolved before the
    check; a ``cvm train`` run directory stands for its ``bundle/``. Anything that resolves
    outside ``root`` is PERMISSION_DENIED with one message whether or not it exists, so a
    caller learns nothing about the file system outside ``root``."""
    path = bundle_path(path)
    try:
        resolved = Path(os.path.realpath(root / path))
        inside = resolved == root or root in resolved.parents
        if inside:
            resolved = Path(os.path.realpath(bundle_dir(resolved)))
            inside = resolved == root or root in resolved.parents
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED, OUTSIDE_ROOT)
    return resolved


def _customer_id(customer_id: str, field: str) -> str:
    if not customer_id:
        raise invalid(f"{field}: required (the id outcomes and exports join on)")
    return bounded(customer_id, MAX_CUSTOMER_ID_LENGTH, field)


def _action_index(model: ServingModel, action: pb.Action, field: str) -> int:
    bounded(action.offer_id, MAX_NAME_LENGTH, f"{field}.offer_id")
    bounded(action.channel, MAX_NAME_LENGTH, f"{field}.channel")
    if bool(action.offer_id) != bool(action.channel):
        raise invalid(
            f"{field}: offer_id and channel must both be set, or both empty for no contact"
        )
    index = model.action_index.get((action.offer_id, action.channel))
    if index is None:
        if action.offer_id not in model.offer_columns:
            raise invalid(
                f"{field}.offer_id: unknown offer {shown(action.offer_id)}; known: {model.offers}"
            )
        raise invalid(
            f"{field}.channel: unknown channel {shown(action.channel)}; known: {model.channels}"
        )
    return index


def _names(names: Sequence[str], known: dict[str, np.ndarray], what: str, field: str) -> None:
    for i, name in enumerate(names):
        bounded(name, MAX_NAME_LENGTH, f"{field}[{i}]")
        if name not in known:
            raise invalid(f"{field}[{i}]: unknown {what} {shown(name)}; known: {list(known)}")


def eligibility_mask(model: ServingModel, elig: pb.Eligibility | None, field: str) -> np.ndarray:
    """(A,) boolean mask of the actions ``elig`` allows (no contact unless contact_required)."""
    mask = np.ones(model.n_actions, dtype=bool)
    if elig is None:
        return mask
    for allow_field, excluded_field, columns, what in (
        ("eligible_offers", "excluded_offers", model.offer_columns, "offer"),
        ("eligible_channels", "excluded_channels", model.channel_columns, "channel"),
    ):
        if elig.HasField(allow_field):
            names = list(getattr(elig, allow_field).names)
            _names(names, columns, what, f"{field}.{allow_field}.names")
            allowed = np.zeros(model.n_actions, dtype=bool)
            allowed[0] = True
            for name in names:
                allowed |= columns[name]
            mask &= allowed
        excluded = list(getattr(elig, excluded_field))
        _names(excluded, columns, what, f"{field}.{excluded_field}")
        for name in excluded:
            mask &= ~columns[name]
    if elig.contact_required:
        mask[0] = False
        if not mask.any():
            raise invalid(
                f"{field}: no eligible action: contact_required is set but the allow-lists "
                "and exclusions leave no (offer, channel) pair"
            )
    return mask


def _check_features(
    model: ServingModel, features: np.ndarray, field: str, *, rows: bool = False
) -> None:
    """Every value finite and inside its feature's [min, max] (GetPolicyInfo.features);
    ``rows`` names the row of the first bad value (a batch)."""
    # A NaN fails both comparisons, and so does an infinity unless a bound is infinite.
    inside = (features >= model.feature_min) & (features <= model.feature_max)
    if inside.all() and (model.finite_bounds or np.isfinite(features).all()):
        return
    names = model.feature_names
    bad = ~np.isfinite(features)
    out = (features < model.feature_min) | (features > model.feature_max)
    row, col = np.argwhere(bad if bad.any() else out)[0]
    where = f"row {row}, " if rows else ""
    value = features[row, col]
    if bad.any():
        raise invalid(f"{field}: {where}feature {names[col]!r} must be finite, got {value}")
    feature = model.features[col]
    unit = f" {feature.unit}" if feature.unit else ""
    raise invalid(
        f"{field}: {where}feature {names[col]!r} must be in [{feature.min:g}, "
        f"{feature.max:g}]{unit} ({feature.description}), got {value:g}"
    )


def _event_id(event_id: str, field: str) -> str:
    if not event_id:
        return new_event_ids(1)[0]
    return bounded(event_id, MAX_EVENT_ID_LENGTH, field)


@dataclass
class ParsedRows:
    """Validated request rows as arrays."""

    event_ids: list[str]
    customer_ids: list[str]
    features: np.ndarray  # (N, F) float32
    eligible: np.ndarray  # (N, A) bool
    baseline: np.ndarray  # (N,) int, -1 = none
    return_probabilities: bool


def parse_decide(model: ServingModel, req: pb.DecideRequest) -> ParsedRows:
    customer_id = _customer_id(req.customer_id, "customer_id")
    event_id = _event_id(req.event_id, "event_id")
    which = req.WhichOneof("features")
    names = model.feature_names
    if which is None:
        raise invalid("features: required: set dense (values in schema order) or named")
    if which == "dense":
        values = req.dense.values
        if len(values) != model.n_features:
            raise invalid(
                f"features.dense.values: expected {model.n_features} values in schema order "
                f"(see GetPolicyInfo.feature_names), got {len(values)}"
            )
        features = np.array(values, dtype=np.float32)[None, :]
        _check_features(model, features, "features.dense.values")
    else:
        named = req.named.values
        for key in named:
            bounded(key, MAX_NAME_LENGTH, "features.named.values (a key)")
        missing = [n for n in names if n not in named]
        unknown = sorted(k for k in named if k not in model.feature_index)
        if missing or unknown:
            raise invalid(
                f"features.named.values: must hold exactly the schema's {model.n_features} "
                f"names; missing {shown(missing)}, unknown {shown(unknown)}"
            )
        features = np.array([[named[n] for n in names]], dtype=np.float32)
        _check_features(model, features, "features.named.values")
    elig = req.eligibility if req.HasField("eligibility") else None
    mask = eligibility_mask(model, elig, "eligibility")
    baseline = (
        _action_index(model, req.baseline_action, "baseline_action")
        if req.HasField("baseline_action")
        else -1
    )
    return ParsedRows(
        [event_id],
        [customer_id],
        features,
        mask[None, :],
        np.array([baseline]),
        req.return_probabilities,
    )


def parse_batch(model: ServingModel, req: pb.DecideBatchRequest, max_rows: int) -> ParsedRows:
    n = len(req.customer_ids)
    if n == 0:
        raise invalid("customer_ids: at least one row is required (one customer id per row)")
    if n > max_rows:
        raise invalid(f"customer_ids: {n} rows exceed the batch limit of {max_rows}")
    customer_ids = list(req.customer_ids)
    if not _all_within(customer_ids, MAX_CUSTOMER_ID_LENGTH):
        for i, cid in enumerate(customer_ids):  # the first bad one, named
            _customer_id(cid, f"customer_ids[{i}]")
    f = model.n_features
    if req.n_features != f:
        raise invalid(
            f"n_features: expected {f} (the schema's feature count), got {req.n_features}"
        )
    if len(req.features) != n * f:
        raise invalid(
            f"features: expected {n} rows x {f} features = {n * f} values, got {len(req.features)}"
        )
    features = np.array(req.features, dtype=np.float32).reshape(n, f)
    names = model.feature_names
    if req.feature_names:
        given = [
            bounded(x, MAX_NAME_LENGTH, f"feature_names[{i}]")
            for i, x in enumerate(req.feature_names)
        ]
        if sorted(given) != sorted(names):
            missing = [x for x in names if x not in given]
            unknown = [x for x in given if x not in model.feature_index]
            raise invalid(
                f"feature_names: must be a permutation of the schema's {f} names; "
                f"missing {shown(missing)}, unknown {shown(unknown)}, duplicated "
                f"{shown(sorted({x for x in given if given.count(x) > 1}))}"
            )
        ordered = np.empty_like(features)
        ordered[:, [model.feature_index[x] for x in given]] = features
        features = ordered
    _check_features(model, features, "features", rows=True)
    if req.event_ids:
        if len(req.event_ids) != n:
            raise invalid(
                f"event_ids: expected 0 or {n} entries (one per row), got {len(req.event_ids)}"
            )
        event_ids = list(req.event_ids)
        if not _all_within(event_ids, MAX_EVENT_ID_LENGTH):  # empty ones get new ids
            event_ids = [_event_id(e, f"event_ids[{i}]") for i, e in enumerate(event_ids)]
        if len(set(event_ids)) != n:
            first_seen: dict[str, int] = {}
            dup = next(e for i, e in enumerate(event_ids) if first_seen.setdefault(e, i) != i)
            raise invalid(f"event_ids: must be distinct within a batch; {shown(dup)} repeats")
    else:
        event_ids = new_event_ids(n)
    which = req.WhichOneof("eligibility")
    if which == "row_eligibilities":
        rows = req.row_eligibilities.rows
        if len(rows) != n:
            raise invalid(
                f"row_eligibilities.rows: expected {n} entries (one per row), got {len(rows)}"
            )
        mask = np.stack(
            [eligibility_mask(model, e, f"row_eligibilities.rows[{i}]") for i, e in enumerate(rows)]
        )
    else:
        shared = req.shared_eligibility if which == "shared_eligibility" else None
        mask = np.broadcast_to(
            eligibility_mask(model, shared, "shared_eligibility"), (n, model.n_actions)
        )
    if req.baseline_actions:
        if len(req.baseline_actions) != n:
            raise invalid(
                f"baseline_actions: expected 0 or {n} entries (one per row), "
                f"got {len(req.baseline_actions)}"
            )
        baseline = np.array(
            [
                _action_index(model, a, f"baseline_actions[{i}]")
                for i, a in enumerate(req.baseline_actions)
            ]
        )
    else:
        baseline = np.full(n, -1)
    return ParsedRows(event_ids, customer_ids, features, mask, baseline, req.return_probabilities)


def _all_within(values: list[str], limit: int) -> bool:
    """Whether every string is non-empty and at most ``limit`` characters long (one pass
    each in C; the per-row checks run only to name a bad row)."""
    return all(values) and max(map(len, values)) <= limit


def parse_outcomes(outcomes: Sequence[pb.Outcome], field: str) -> list[OutcomeRecord]:
    """The outcome reports of a ReportOutcome (``field`` ``outcome``) or ReportOutcomes
    (``outcomes``) request as records, each checked."""
    records = []
    seen: set[str] = set()
    for i, o in enumerate(outcomes):
        where = field if len(outcomes) == 1 and field == "outcome" else f"{field}[{i}]"
        if not o.event_id:
            raise invalid(f"{where}.event_id: required")
        bounded(o.event_id, MAX_EVENT_ID_LENGTH, f"{where}.event_id")
        if o.event_id in seen:
            raise invalid(f"{where}.event_id: {shown(o.event_id)} repeats within the request")
        seen.add(o.event_id)
        if not o.HasField("reward"):
            raise invalid(f"{where}.reward: required (the value the policy learns from)")
        if not np.isfinite(o.reward):
            raise invalid(f"{where}.reward: must be finite, got {o.reward}")
        if o.HasField("spend") and not (np.isfinite(o.spend) and o.spend >= 0):
            raise invalid(f"{where}.spend: must be finite and >= 0, got {o.spend}")
        reported = None
        if o.HasField("reported_at"):
            reported = _timestamp_us(o.reported_at, f"{where}.reported_at")
        records.append(
            OutcomeRecord(
                event_id=o.event_id,
                reward=o.reward,
                purchase=o.purchase if o.HasField("purchase") else None,
                spend=o.spend if o.HasField("spend") else None,
                opt_out=o.opt_out if o.HasField("opt_out") else None,
                reported_at_us=reported,
            )
        )
    return records


def _timestamp_us(ts: Timestamp, field: str) -> int:
    """Microseconds since the epoch; INVALID_ARGUMENT outside :data:`TIMESTAMP_RANGE` (the
    log stores 64-bit integers: a later time would overflow them)."""
    if not (0 <= ts.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise invalid(
            f"{field}: must be a valid time in {TIMESTAMP_RANGE} (seconds in "
            f"[0, {MAX_TIMESTAMP_SECONDS}], nanos in [0, 999999999]), got seconds={ts.seconds}, "
            f"nanos={ts.nanos}"
        )
    return ts.seconds * 1_000_000 + ts.nanos // 1000
