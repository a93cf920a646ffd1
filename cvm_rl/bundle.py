"""Model bundles: a trained policy as a directory the decision service can load without torch.

A bundle is a directory with two files:

* ``manifest.json``: format version, policy kind, algorithm, model id and content hash,
  creation time, package version, the observation schema (feature names in order and the
  :class:`FeatureTransform` bounds, log flags and scales, and each feature's meaning, unit,
  encoding and valid range), the action catalog, the full scenario the policy was trained
  on, the policy's configuration, the name/dtype/shape of every array, the training
  configuration and metrics.
* ``arrays.npz``: the policy's arrays (``np.savez``; read with ``allow_pickle=False``).

The content hash (``sha256``; ``version`` is its first 12 hex digits, ``model_id`` is
``{algo}-{version}``) covers the arrays and every manifest field except the id, the hash
itself, ``created_at`` and ``cvm_rl_version``, so a corrupted array file or an edited
manifest is refused, while saving the same model twice gives the same version.

Loading checks, in order: the files exist and parse, the format version and kind are known,
the arrays match the manifest's listing, the hash matches, the scenario validates, the stored
observation schema and action catalog equal the ones recomputed from that scenario, and the
policy rebuilds. Every failure is a :class:`BundleError` naming the file and the problem.

Policy kinds are a small registry (:func:`register_policy_kind`); a policy class with
``state_dict()`` / ``from_state_dict(state, scenario, *, seed=None)`` needs one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from cvm_rl import __version__
from cvm_rl.policies.bandits import LinearBandit
from cvm_rl.policies.base import Policy
from cvm_rl.policies.baselines import NoContactPolicy, RandomPolicy, Rule, RuleBasedPolicy
from cvm_rl.policies.features import FeatureTransform
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from cvm_rl.policies.mlp import MLPPolicy
from cvm_rl.policies.planner import CLVPlannerPolicy
from simulator.config import Scenario, ScenarioError, scenario_from_mapping
from simulator.core import observation_feature_names
from simulator.observation import observation_features

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAYS_FILE = "arrays.npz"

_UNHASHED = ("model_id", "version", "sha256", "created_at", "cvm_rl_version")
"""Manifest fields outside the content hash (derived from it, or provenance only)."""

_ALGO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArraySpec(_Part):
    """An entry of the manifest's ``arrays``: what ``arrays.npz`` must hold under a name."""

    dtype: str
    shape: list[int]


class TransformSpec(_Part):
    """The :class:`FeatureTransform` vectors, one entry per feature."""

    low: list[float]
    high: list[float]
    log: list[bool]
    scale: list[float]


class FeatureSpec(_Part):
    """What one feature means and its valid range (from ``simulator.observation``)."""

    name: str
    description: str
    unit: str
    encoding: str
    group: str
    min: float
    max: float


class ObservationSpec(_Part):
    """The observation schema: feature names in order, their scaling and (bundles written
    since the decision service validates ranges) each feature's meaning and range."""

    feature_names: list[str]
    transform: TransformSpec
    features: list[FeatureSpec] | None = None


class CatalogAction(_Part):
    """One action of the catalog; index 0 is no contact (offer and channel None)."""

    index: int
    name: str
    offer: str | None
    channel: str | None


class BundleManifest(_Part):
    """``manifest.json``, validated on load (every key present with its type)."""

    format_version: int
    kind: str
    algo: str
    model_id: str
    version: str
    sha256: str
    created_at: str
    cvm_rl_version: str
    policy_name: str
    policy_config: dict[str, Any]
    arrays: dict[str, ArraySpec]
    observation: ObservationSpec
    actions: list[CatalogAction]
    scenario: dict[str, Any]
    training_config: dict[str, Any]
    metrics: dict[str, Any]


class BundleError(ValueError):
    """A model bundle is missing, corrupted or inconsistent (the message names the file)."""


# --------------------------------------------------------------------------- policy kinds
SaveFn = Callable[[Policy], dict[str, Any]]
LoadFn = Callable[[dict[str, Any], Scenario, int | None], Policy]


@dataclass(frozen=True)
class PolicyKind:
    """How one family of policies becomes a state (config + arrays) and back.

    ``save(policy)`` returns a dict whose ``np.ndarray`` values go to ``arrays.npz`` and whose
    other values (JSON-serializable) go to the manifest's ``policy_config``; ``load(state,
    scenario, seed)`` gets both merged back."""

    name: str
    policy_type: type[Policy]
    save: SaveFn
    load: LoadFn


POLICY_KINDS: dict[str, PolicyKind] = {}


def register_policy_kind(
    name: str,
    policy_type: type[Policy],
    *,
    save: SaveFn | None = None,
    load: LoadFn | None = None,
) -> PolicyKind:
    """Register a bundle kind; by default ``policy.state_dict()`` and
    ``policy_type.from_state_dict(state, scenario, seed=seed)``. Subclasses of
    ``policy_type`` are saved under this kind unless they have their own."""
    if name in POLICY_KINDS:
        raise ValueError(f"name: policy kind {name!r} is already registered")

    def default_save(policy: Policy) -> dict[str, Any]:
        return dict(policy.state_dict())  # type: ignore[attr-defined]

    def default_load(state: dict[str, Any], scenario: Scenario, seed: int | None) -> Policy:
        policy = policy_type.from_state_dict(state, scenario, seed=seed)  # type: ignore[attr-defined]
        assert isinstance(policy, Policy)
        return policy

    kind = PolicyKind(name, policy_type, save or default_save, load or default_load)
    POLICY_KINDS[name] = kind
    return kind


def _stateless(policy_type: type[Policy]) -> LoadFn:
    def load(state: dict[str, Any], scenario: Scenario, seed: int | None) -> Policy:
        if state:
            raise ValueError(f"state: {policy_type.__name__} takes no state, got {sorted(state)}")
        return policy_type(scenario, seed=seed)

    return load


def _save_rules(policy: Policy) -> dict[str, Any]:
    assert isinstance(policy, RuleBasedPolicy)
    return {
        "rules": [dataclasses.asdict(rule) for rule in policy.rules],
        "min_weeks_between_contacts": policy.min_weeks_between_contacts,
    }


def _load_rules(state: dict[str, Any], scenario: Scenario, seed: int | None) -> Policy:
    rules = []
    for i, raw in enumerate(state["rules"]):
        fields = dict(raw)
        if "segment" in fields:  # saved before segments became latent conditions
            segment = fields.pop("segment")
            fields["when"] = [f"segment_{segment}"] if segment else []
        try:
            rules.append(
                Rule(
                    **{
                        **fields,
                        "channels": tuple(fields["channels"]),
                        "when": tuple(fields.get("when", ())),
                    }
                )
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"rules[{i}]: not a valid Rule ({exc})") from None
    return RuleBasedPolicy(
        scenario,
        rules=rules,
        min_weeks_between_contacts=int(state["min_weeks_between_contacts"]),
        seed=seed,
    )


register_policy_kind("mlp", MLPPolicy)
# LinUCB, LinTS and epsilon-greedy (from_state_dict dispatches on the stored name).
register_policy_kind("linear_bandit", LinearBandit)  # type: ignore[type-abstract]
register_policy_kind(
    "no_contact", NoContactPolicy, save=lambda p: {}, load=_stateless(NoContactPolicy)
)
register_policy_kind("random", RandomPolicy, save=lambda p: {}, load=_stateless(RandomPolicy))
register_policy_kind("rules", RuleBasedPolicy, save=_save_rules, load=_load_rules)
register_policy_kind("greedy_uplift", GreedyUpliftPolicy)
register_policy_kind("clv_planner", CLVPlannerPolicy)


def policy_kind(policy: Policy) -> PolicyKind:
    """The registered kind of ``policy`` (the nearest registered class in its MRO)."""
    by_type = {kind.policy_type: kind for kind in POLICY_KINDS.values()}
    for klass in type(policy).__mro__:
        if klass in by_type:
            return by_type[klass]
    raise ValueError(
        f"policy: {type(policy).__name__} cannot be bundled; supported: "
        + ", ".join(f"{k.policy_type.__name__} ({k.name})" for k in POLICY_KINDS.values())
    )


# --------------------------------------------------------------------------- schema
def feature_specs(scenario: Scenario) -> list[dict[str, Any]]:
    """``[{name, description, unit, encoding, group, min, max}]`` in observation order, from
    the observation schema; a heavy-tailed feature's encoding says it is log-scaled."""
    return [
        {
            "name": f.name,
            "description": f.description,
            "unit": f.unit,
            "encoding": f"{f.encoding}, log-scaled" if f.heavy_tailed else f.encoding,
            "group": f.group,
            "min": float(f.low),
            "max": float(f.high),
        }
        for f in observation_features(scenario)
    ]


def observation_schema(scenario: Scenario) -> dict[str, Any]:
    """Feature names in order, the fixed feature transform and each feature's meaning and
    range, as JSON-ready lists."""
    transform = FeatureTransform.from_scenario(scenario)
    return {
        "feature_names": observation_feature_names(scenario),
        "transform": {
            "low": transform.low.tolist(),
            "high": transform.high.tolist(),
            "log": transform.log.tolist(),
            "scale": transform.scale.tolist(),
        },
        "features": feature_specs(scenario),
    }


def action_catalog(scenario: Scenario) -> list[dict[str, Any]]:
    """``[{index, name, offer, channel}]``; index 0 is ``no_contact`` (offer/channel None)."""
    catalog = []
    for index, name in enumerate(scenario.action_names()):
        offer, channel = scenario.decode_action(index)
        catalog.append({"index": index, "name": name, "offer": offer, "channel": channel})
    return catalog


def content_hash(manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 hex digest of the hashed manifest fields (canonical JSON) and the arrays
    (name, dtype, shape and bytes, in name order)."""
    body = {k: v for k, v in manifest.items() if k not in _UNHASHED}
    digest = sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    )
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, arr.dtype.str, list(arr.shape)]).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (numpy scalars and tuples converted); errors name
    ``where`` for anything else, including non-finite floats."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ValueError(f"{where}: {type(value).__name__} is not JSON-serializable")


# --------------------------------------------------------------------------- save
def save_bundle(
    policy: Policy,
    path: str | Path,
    *,
    algo: str,
    training_config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``policy`` as a bundle directory at ``path`` and return the path.

    The bundle is written to a temporary sibling directory, verified by loading it back, and
    renamed into place, so a crash never leaves a half-written bundle. An existing bundle at
    ``path`` is replaced; any other existing file or non-empty directory is refused."""
    kind = policy_kind(policy)
    scenario = getattr(policy, "scenario", None)
    if not isinstance(scenario, Scenario):
        raise ValueError(
            f"policy: {type(policy).__name__} has no scenario (raw-feature mode?); a bundle "
            "needs the scenario the policy was trained on"
        )
    if not isinstance(algo, str) or not _ALGO.fullmatch(algo):
        raise ValueError(f"algo must be a non-empty name of letters, digits, _.-, got {algo!r}")
    if not isinstance(training_config, Mapping):
        raise ValueError(f"training_config must be a mapping, got {type(training_config)}")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a mapping or None, got {type(metrics)}")
    root = Path(path)
    if root.exists() and not (root.is_dir() and _replaceable(root)):
        raise ValueError(f"path: {root} exists and is not a bundle; refusing to overwrite it")

    state = kind.save(policy)
    arrays = {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise ValueError(f"policy: state array {name!r} has object dtype; not storable")
    config = {k: v for k, v in state.items() if k not in arrays}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind.name,
        "algo": algo,
        "model_id": "",
        "version": "",
        "sha256": "",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cvm_rl_version": __version__,
        "policy_name": policy.name,
        "policy_config": _jsonable(config, "policy state"),
        "arrays": {
            name: {"dtype": arr.dtype.name, "shape": list(arr.shape)}
            for name, arr in sorted(arrays.items())
        },
        "observation": observation_schema(scenario),
        "actions": action_catalog(scenario),
        "scenario": scenario.model_dump(mode="json"),
        "training_config": _jsonable(training_config, "training_config"),
        "metrics": _jsonable(metrics or {}, "metrics"),
    }
    digest = content_hash(manifest, arrays)
    manifest["sha256"] = digest
    manifest["version"] = digest[:12]
    manifest["model_id"] = f"{algo}-{digest[:12]}"

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        with open(tmp / ARRAYS_FILE, "wb") as fh:
            payload: dict[str, Any] = arrays  # np.savez's stubs type **kwds narrowly
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            load_bundle(tmp)
        except BundleError as exc:
            raise ValueError(f"policy: the written bundle does not load back: {exc}") from exc
        _replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _replaceable(root: Path) -> bool:
    """An empty directory or an earlier bundle (nothing else gets deleted)."""
    entries = {p.name for p in root.iterdir()}
    return entries <= {MANIFEST_FILE, ARRAYS_FILE}


def _replace_dir(new: Path, root: Path) -> None:
    """Move ``new`` to ``root``; an old ``root`` is moved aside first and then deleted."""
    if not root.exists():
        os.rename(new, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
    os.rename(root, old / "bundle")
    os.rename(new, root)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- load
@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the rebuilt policy, its manifest (as stored, and validated as
    ``spec``), its scenario and where it lives."""

    policy: Policy
    manifest: dict[str, Any]
    spec: BundleManifest
    scenario: Scenario
    path: Path

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def algo(self) -> str:
        return self.spec.algo

    @property
    def feature_names(self) -> list[str]:
        return list(self.spec.observation.feature_names)

    @property
    def action_names(self) -> list[str]:
        return [action.name for action in self.spec.actions]

    @property
    def features_stored(self) -> bool:
        """Whether the manifest holds the feature metadata (older bundles do not)."""
        return self.spec.observation.features is not None

    @property
    def features(self) -> list[FeatureSpec]:
        """Each feature's meaning and valid range, in schema order: as stored, or for an
        older bundle without them, derived from its scenario by this cvm_rl."""
        stored = self.spec.observation.features
        if stored is not None:
            return list(stored)
        return [FeatureSpec.model_validate(f) for f in feature_specs(self.scenario)]


def load_bundle(path: str | Path, *, seed: int | None = None) -> Bundle:
    """Load and verify a bundle directory (see the module doc); ``seed`` seeds the policy."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: bundle directory does not exist")
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (expected a directory)")
    manifest_path = root / MANIFEST_FILE
    manifest, spec = _read_manifest(manifest_path)
    kind = POLICY_KINDS.get(spec.kind)
    if kind is None:
        raise BundleError(
            f"{manifest_path}: unknown kind {manifest['kind']!r}; known: {sorted(POLICY_KINDS)}"
        )
    arrays_path = root / ARRAYS_FILE
    arrays = _read_arrays(arrays_path, spec.arrays)

    digest = content_hash(manifest, arrays)
    if digest != manifest["sha256"]:
        raise BundleError(
            f"{root}: content hash mismatch: {MANIFEST_FILE} says sha256 "
            f"{manifest['sha256']!r}, the content hashes to {digest!r} "
            f"({ARRAYS_FILE} corrupted or {MANIFEST_FILE} edited)"
        )
    expected_id = f"{manifest['algo']}-{digest[:12]}"
    if manifest["version"] != digest[:12] or manifest["model_id"] != expected_id:
        raise BundleError(
            f"{manifest_path}: version/model_id {manifest['version']!r}/{manifest['model_id']!r} "
            f"do not match the content hash (expected {digest[:12]!r}/{expected_id!r})"
        )

    stored_scenario = dict(manifest["scenario"])
    if "segment_observed" not in stored_scenario:
        # Saved before segments became latent: its policy saw the segment label.
        stored_scenario["segment_observed"] = True
    try:
        scenario = scenario_from_mapping(stored_scenario, source=f"{manifest_path}: scenario")
    except ScenarioError as exc:
        raise BundleError(str(exc)) from None
    _check_schema(manifest_path, spec, scenario)

    state = {**manifest["policy_config"], **arrays}
    try:
        policy = kind.load(state, scenario, seed)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{root}: cannot rebuild the {kind.name!r} policy: {exc}") from None
    if policy.name != manifest["policy_name"]:
        raise BundleError(
            f"{manifest_path}: policy_name {manifest['policy_name']!r} but the rebuilt policy "
            f"is {policy.name!r}"
        )
    return Bundle(policy=policy, manifest=manifest, spec=spec, scenario=scenario, path=root)


def _read_manifest(manifest_path: Path) -> tuple[dict[str, Any], BundleManifest]:
    """The manifest as stored (what the content hash covers) and validated."""
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (not a bundle directory?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: invalid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(
            f"{manifest_path}: unknown format_version {version!r}; this cvm_rl "
            f"({__version__}) reads format_version {FORMAT_VERSION}"
        )
    try:
        spec = BundleManifest.model_validate(manifest)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            raise BundleError(f"{manifest_path}: missing key {key!r}") from None
        raise BundleError(f"{manifest_path}: key {key!r}: {error['msg']}") from None
    return manifest, spec


def _read_arrays(arrays_path: Path, listing: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
    if not arrays_path.is_file():
        raise BundleError(f"{arrays_path}: missing")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{arrays_path}: unreadable (truncated or corrupted?): {exc}") from None
    if sorted(arrays) != sorted(listing):
        raise BundleError(
            f"{arrays_path}: holds arrays {sorted(arrays)} but the manifest lists {sorted(listing)}"
        )
    for name, arr in arrays.items():
        shape, dtype = listing[name].shape, listing[name].dtype
        if list(arr.shape) != shape or arr.dtype.name != dtype:
            raise BundleError(
                f"{arrays_path}: array {name!r} has shape {list(arr.shape)} and dtype "
                f"{arr.dtype.name} but the manifest says shape {shape} and dtype {dtype}"
            )
    return arrays


def _check_schema(manifest_path: Path, spec: BundleManifest, scenario: Scenario) -> None:
    """The stored observation schema and action catalog equal the ones the scenario implies
    (a mismatch would feed the policy features in the wrong order or scale)."""
    expected = observation_schema(scenario)
    problem = f"{manifest_path}: observation schema does not match the bundled scenario"
    names, want = spec.observation.feature_names, expected["feature_names"]
    if names != want:
        diff = [i for i, (a, b) in enumerate(zip(names, want, strict=False)) if a != b]
        detail = (
            f"feature {diff[0]} is {names[diff[0]]!r}, the scenario gives {want[diff[0]]!r}"
            if diff
            else f"{len(names)} stored features, the scenario gives {len(want)}"
        )
        raise BundleError(f"{problem} ({detail})")
    transform = spec.observation.transform.model_dump()
    for field, values in expected["transform"].items():
        if transform[field] != values:
            raise BundleError(f"{problem} (transform.{field} differs)")
    # Descriptions may be worded differently by another cvm_rl; names and ranges may not.
    if spec.observation.features is not None:
        stored = [(f.name, f.min, f.max) for f in spec.observation.features]
        if stored != [(f["name"], f["min"], f["max"]) for f in expected["features"]]:
            raise BundleError(f"{problem} (features: names or ranges differ)")
    if [a.model_dump() for a in spec.actions] != action_catalog(scenario):
        raise BundleError(
            f"{manifest_path}: action catalog does not match the bundled scenario "
            f"(stored {[a.name for a in spec.actions]}, scenario gives {scenario.action_names()})"
        )
