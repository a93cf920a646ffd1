"""Scenario files: the parameters of a simulated customer base, validated on load.

A scenario is a TOML file (``simulator/scenarios/default.toml`` is the shipped default).
Every key is checked: an unknown key, a negative cost or a probability outside [0, 1] raises
:class:`ScenarioError` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
WeekOfYear = Annotated[int, Field(ge=1, le=52)]

STAGES: tuple[str, ...] = (
    "prospect",
    "new",
    "active",
    "at_risk",
    "lapsed",
    "churned",
    "reactivated",
)


class ScenarioError(ValueError):
    """A scenario file or mapping failed validation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PurchaseModel(_Strict):
    """BG/NBD purchase and dropout process plus Gamma-Gamma spend, in weekly units."""

    r: Positive = 0.243
    alpha: Positive = 4.414
    a: Positive = 0.793
    b: Positive = 2.426
    spend_p: Positive = 6.25
    spend_q: Annotated[float, Field(gt=1.0)] = 3.74
    spend_gamma: Positive = 15.44
    reactivation_prob: Probability = 0.002
    """Weekly chance that a customer who dropped out comes back unprompted."""
    winback_response: NonNegative = 3.0
    """How strongly a contact's lift raises the reactivation chance of a dropped-out customer."""
    pull_forward_repay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25
    """Share of the outstanding pulled-forward purchases repaid (not made) each week."""
    dropout_on: Literal["every_purchase", "base_purchases"] = "every_purchase"
    """Which repeat purchases carry BG/NBD's chance of dropping out: every one, or only those
    of the base process (purchases an offer adds carry none). See the default scenario."""


class Stages(_Strict):
    """Recency thresholds (weeks) that map purchase history onto lifecycle stages."""

    new_weeks: Annotated[int, Field(ge=1)] = 8
    at_risk_weeks: Annotated[int, Field(ge=1)] = 12
    lapsed_weeks: Annotated[int, Field(ge=1)] = 26
    churned_weeks: Annotated[int, Field(ge=1)] = 52

    @model_validator(mode="after")
    def _ordered(self) -> Stages:
        if not self.at_risk_weeks < self.lapsed_weeks < self.churned_weeks:
            raise ValueError(
                "thresholds must satisfy at_risk_weeks < lapsed_weeks < churned_weeks, got "
                f"{self.at_risk_weeks}, {self.lapsed_weeks}, {self.churned_weeks}"
            )
        return self


class SeasonalPeak(_Strict):
    start_week: WeekOfYear
    end_week: WeekOfYear
    multiplier: NonNegative


class Segment(_Strict):
    """A group of customers that shifts latent parameters and sensitivities."""

    share: Probability
    rate_multiplier: Positive = 1.0
    dropout_multiplier: Positive = 1.0
    spend_multiplier: Positive = 1.0
    offer_sensitivity: NonNegative = 1.0
    contact_churn_prob: Probability = 0.0
    """Chance per contact that the customer drops out ("sleeping dogs")."""
    channel_affinity: dict[str, NonNegative] = Field(default_factory=dict)
    """Response multiplier per channel name (missing channels: 1.0)."""


class Attribute(_Strict):
    """An observable customer attribute whose distribution depends on the latent segment.

    Segments are not observed: a policy sees only attributes like these (how the customer
    was acquired, what they buy, where they live), each a noisy hint at the segment, as a
    one-hot group ``{attribute}_{member}`` of the observation.
    """

    description: str = ""
    members: list[str] = Field(min_length=2)
    by_segment: dict[str, list[Probability]]
    """For every segment, the probability of each member, in ``members`` order (sums to 1)."""

    @model_validator(mode="after")
    def _distributions(self) -> Attribute:
        bad = [m for m in self.members if not m.isidentifier()]
        if bad or len(set(self.members)) != len(self.members):
            raise ValueError(f"members must be distinct identifiers, got {self.members}")
        for segment, probs in self.by_segment.items():
            if len(probs) != len(self.members):
                raise ValueError(
                    f"by_segment.{segment}: {len(probs)} probabilities for "
                    f"{len(self.members)} members {self.members}"
                )
            if abs(sum(probs) - 1.0) > 1e-6:
                raise ValueError(
                    f"by_segment.{segment}: probabilities sum to {sum(probs):.6g}, not 1"
                )
        return self


class Offer(_Strict):
    """One entry of the offer catalog; ``none`` is a plain message without incentive."""

    uplift: NonNegative
    """Relative increase of the weekly purchase rate when sent (before channel and fatigue)."""
    discount_rate: Probability = 0.0
    """Share of list price given away on every purchase in the offer week."""
    cost_per_order: NonNegative = 0.0
    """Fixed cost on every purchase in the offer week (e.g. free shipping)."""
    pull_forward_share: Probability = 0.0
    """Share of the incremental purchases that are only pulled forward in time."""
    retention_multiplier: Positive = 1.0
    """Multiplier on the per-purchase dropout probability while the effect lasts."""
    retention_weeks: Annotated[int, Field(ge=0)] = 0


class Channel(_Strict):
    cost: NonNegative
    """Cost per contact."""
    opt_in_prob: Probability
    """Share of customers reachable on this channel."""
    response: NonNegative = 1.0
    fatigue_decay: Probability = 0.7
    """Weekly retention of accumulated fatigue (0: forgets at once)."""
    fatigue_sensitivity: NonNegative = 0.5
    optout_base: Probability = 0.0
    """Chance per contact that the customer opts out of the channel, at zero fatigue."""
    optout_per_fatigue: NonNegative = 1.0
    """Relative increase of the opt-out chance per unit of fatigue."""
    max_per_window: Annotated[int, Field(ge=0)] = 2
    """Frequency cap: contacts on this channel within ``constraints.cap_window_weeks``."""


class ContactResponse(_Strict):
    """How a contact's uplift varies with what the customer's history shows."""

    new_customer_weeks: Annotated[int, Field(ge=0, le=520)] = 52
    """A customer whose first purchase was fewer weeks ago than this is "new" (Hillstrom's
    "newbie": a first purchase in the last twelve months)."""
    new_customer_multiplier: Positive = 1.0
    """Multiplier of every contact's uplift for new customers (others: 1.0)."""


class Constraints(_Strict):
    cap_window_weeks: Annotated[int, Field(ge=1, le=52)] = 4
    max_contacts_per_window: Annotated[int, Field(ge=0)] = 3
    budget_per_customer_week: NonNegative | None = None
    """Contact budget per period, per customer of the population (None: no budget)."""


class Acquisition(_Strict):
    prospect_share: Probability = 0.1
    """Share of the starting population registered but without a first purchase."""
    prospect_conversion: NonNegative = 0.3
    """Multiplier on the latent purchase rate until the first purchase."""
    arrival_share: Probability = 0.0
    """Share of customers who join during the episode (weekly cohorts), uniformly over time."""


class Scenario(_Strict):
    """All parameters of a simulated customer base. Build with :func:`load_scenario`."""

    name: str = "custom"
    description: str = ""
    horizon_weeks: Annotated[int, Field(ge=1, le=520)] = 52
    start_week: WeekOfYear = 1
    history_weeks: Annotated[int, Field(ge=0, le=520)] = 104
    """Weeks of no-contact history simulated before the episode starts."""
    margin_rate: Probability = 0.3
    purchase: PurchaseModel = PurchaseModel()
    stages: Stages = Stages()
    seasonality: list[SeasonalPeak] = Field(default_factory=list)
    segments: dict[str, Segment]
    offers: dict[str, Offer]
    channels: dict[str, Channel]
    constraints: Constraints = Constraints()
    acquisition: Acquisition = Acquisition()
    contact_response: ContactResponse = ContactResponse()
    attributes: dict[str, Attribute] = Field(default_factory=dict)
    """Observable attributes that hint at the latent segment (see :class:`Attribute`)."""
    segment_observed: bool = False
    """True adds the segment label itself to the observation (an ablation: what knowing the
    segment is worth); by default segments are latent."""

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if not self.segments or not self.offers or not self.channels:
            raise ValueError("segments, offers and channels must each have at least one entry")
        total = sum(s.share for s in self.segments.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"segment shares must sum to 1, got {total:.6g}")
        for seg_name, seg in self.segments.items():
            unknown = set(seg.channel_affinity) - set(self.channels)
            if unknown:
                raise ValueError(
                    f"segments.{seg_name}.channel_affinity: unknown channel(s) "
                    f"{sorted(unknown)}; allowed: {sorted(self.channels)}"
                )
        # Imported here: the observation schema is built from a scenario (a cycle otherwise).
        from simulator.observation import FIXED_FEATURE_GROUPS

        for name, attribute in self.attributes.items():
            if not name.isidentifier() or name in FIXED_FEATURE_GROUPS:
                raise ValueError(
                    f"attributes.{name}: the name must be an identifier other than the "
                    f"observation's own groups {sorted(FIXED_FEATURE_GROUPS)}"
                )
            if set(attribute.by_segment) != set(self.segments):
                raise ValueError(
                    f"attributes.{name}.by_segment: needs exactly the segments "
                    f"{sorted(self.segments)}, got {sorted(attribute.by_segment)}"
                )
        return self

    # Derived views used by the kernel and the policies.
    @property
    def offer_names(self) -> list[str]:
        return list(self.offers)

    @property
    def channel_names(self) -> list[str]:
        return list(self.channels)

    @property
    def segment_names(self) -> list[str]:
        return list(self.segments)

    @property
    def attribute_names(self) -> list[str]:
        return list(self.attributes)

    @property
    def n_actions(self) -> int:
        return 1 + len(self.offers) * len(self.channels)

    def action_names(self) -> list[str]:
        """``no_contact`` then ``offer@channel`` for every offer and channel (offer-major)."""
        return ["no_contact"] + [f"{o}@{c}" for o in self.offers for c in self.channels]

    def decode_action(self, action: int) -> tuple[str | None, str | None]:
        """(offer, channel) of an action id, ``(None, None)`` for no contact."""
        if not 0 <= action < self.n_actions:
            raise ValueError(f"action must be in [0, {self.n_actions}), got {action}")
        if action == 0:
            return None, None
        offer_idx, channel_idx = divmod(action - 1, len(self.channels))
        return self.offer_names[offer_idx], self.channel_names[channel_idx]

    def with_overrides(self, overrides: Mapping[str, Any]) -> Scenario:
        """A validated copy with dotted keys replaced, e.g. ``{"channels.sms.cost": 0.1}``."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node, dict) or key not in node:
                    raise ScenarioError(f"override '{dotted}': no key '{key}' in scenario")
                node = node[key]
            if not isinstance(node, dict) or leaf not in node:
                raise ScenarioError(f"override '{dotted}': no key '{leaf}' in scenario")
            node[leaf] = value
        return scenario_from_mapping(data, source=f"{self.name} with overrides")


def _describe(error: Mapping[str, Any], model: type[BaseModel], source: str) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        keys = _allowed_keys(model, error["loc"][:-1])
        hint = f"; allowed keys: {', '.join(keys)}" if keys else ""
        return f"{source}: unknown key '{loc}'{hint}"
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        field = _field_info(model, error["loc"])
        return (
            f"{source}: key '{loc}' = {error.get('input')!r} is out of range; "
            f"allowed {_interval(field)}"
        )
    if kind == "missing":
        return f"{source}: missing required key '{loc}'"
    where = f"key '{loc}'" if loc else "scenario"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, Mapping):  # a whole table failed a cross-field check
        return f"{source}: {where}: {message}"
    return f"{source}: {where}: {message} (got {value!r})"


def _interval(field: Any) -> str:
    """A field's allowed range in interval notation, e.g. ``[0.0, 1.0]`` or ``(1.0, inf)``."""
    bounds = {
        name: float(value)
        for meta in _constraints(field)
        for name in ("ge", "gt", "le", "lt")
        if (value := getattr(meta, name, None)) is not None
    }
    left = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds.get('gt', '-inf')}"
    right = f"{bounds['le']}]" if "le" in bounds else f"{bounds.get('lt', 'inf')})"
    return f"{left}, {right}"


def _field_info(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """Walk the schema along an error location to the field it names (None if not found)."""
    current: Any = model
    field = None
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            # A dict value (segment/offer/channel name): the model is the dict's value type.
            continue
        field = fields[part]
        current = _inner_model(field.annotation)
    return field


def _constraints(field: Any) -> list[Any]:
    """Constraint metadata of a field, also where it sits inside ``X | None`` or ``dict[k, X]``."""
    found = list(getattr(field, "metadata", ()))
    stack = [getattr(field, "annotation", None)]
    while stack and not found:
        annotation = stack.pop()
        for meta in getattr(annotation, "__metadata__", ()):
            found.extend(getattr(meta, "metadata", [meta]))
        stack.extend(getattr(annotation, "__args__", ()))
    return found


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        fields = current.model_fields
        if part in fields:
            current = _inner_model(fields[part].annotation)
        # Otherwise ``part`` is a name inside a dict of models: stay on the value model.
    return sorted(current.model_fields) if current is not None else []


def scenario_from_mapping(data: Mapping[str, Any], *, source: str = "<mapping>") -> Scenario:
    """Validate a parsed scenario; errors name ``source``, the key and what is allowed."""
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as exc:
        messages = [_describe(err, Scenario, source) for err in exc.errors()]
        raise ScenarioError("\n".join(messages)) from None


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("simulator") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_scenario(name_or_path: str | Path | Scenario = "default") -> Scenario:
    """Load a shipped scenario by name (``"default"``) or a TOML file by path."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix == "" and str(name_or_path) in builtin_scenarios():
        resource = resources.files("simulator") / "scenarios" / f"{name_or_path}.toml"
        return _parse(resource.read_text(encoding="utf-8"), source=f"scenario '{name_or_path}'")
    if not path.is_file():
        raise ScenarioError(
            f"scenario '{name_or_path}' is neither a file nor a built-in scenario "
            f"(built-in: {', '.join(builtin_scenarios())})"
        )
    if path.suffix != ".toml":
        raise ScenarioError(f"{path}: scenario files must be TOML (.toml), got '{path.suffix}'")
    return _parse(path.read_text(encoding="utf-8"), source=str(path))


def _parse(text: str, *, source: str) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return scenario_from_mapping(data, source=source)
