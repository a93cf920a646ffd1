"""The observation schema: every feature's name, bounds and kind, in order, in one table.

Everything else is derived from :func:`observation_features`: the names
(:func:`observation_feature_names`), the gymnasium space's bounds (``simulator.spaces``), the
columns :meth:`Population.observe <simulator.core.Population.observe>` writes (through
:class:`ObservationLayout`) and the heavy-tailed flags that learned policies log-scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from simulator.config import STAGES, Scenario

RECENCY_CAP = 520
CONTACT_RECENCY_CAP = 52
# Observation caps keep the Box finite; no simulated customer comes near them.
FREQUENCY_CAP = 100_000
MONETARY_CAP = 1e7
FIXED_FEATURE_GROUPS = frozenset(
    {
        "recency_weeks",
        "frequency",
        "monetary_avg",
        "tenure_weeks",
        "weeks_since_contact",
        "contacts_in_window",
        "opt_in",
        "stage",
        "segment",
        "week_of_year_sin",
        "week_of_year_cos",
        "horizon_progress",
    }
)
"""The observation's own feature groups (a scenario's attributes add theirs; none may clash)."""


@dataclass(frozen=True)
class ObservationFeature:
    """One entry of the observation vector."""

    name: str
    group: str
    """The state quantity the feature reads. A group of several features has one member per
    channel, stage or segment, in that order; a lone feature's group is its own name."""
    low: float
    high: float
    heavy_tailed: bool = False
    """A count with a long right tail (weeks, purchases, spend): learned policies log-scale it."""
    description: str = ""
    """What the feature means, for people and for clients of the decision service."""
    unit: str = ""
    """The unit of the raw value (``weeks``, ``purchases``, ``currency``...); ``""`` for none."""
    encoding: str = ""
    """How the value encodes its quantity: ``count``, ``amount``, ``flag`` (0 or 1),
    ``one-hot`` (exactly one member of the group is 1), ``sin``/``cos`` of an angle, or
    ``fraction``; ``log-scaled`` is added for heavy-tailed features (policies read log1p)."""


def observation_features(sc: Scenario) -> tuple[ObservationFeature, ...]:
    """The observation schema of a scenario: its features in observation order."""
    features = [
        ObservationFeature(
            "recency_weeks",
            "recency_weeks",
            0.0,
            RECENCY_CAP,
            heavy_tailed=True,
            description="weeks since the last purchase (a prospect: since it was first seen)",
            unit="weeks",
            encoding="count",
        ),
        ObservationFeature(
            "frequency",
            "frequency",
            0.0,
            FREQUENCY_CAP,
            heavy_tailed=True,
            description="repeat purchases so far (purchases after the first)",
            unit="purchases",
            encoding="count",
        ),
        ObservationFeature(
            "monetary_avg",
            "monetary_avg",
            0.0,
            MONETARY_CAP,
            heavy_tailed=True,
            description="average spend per purchase so far (0 before the first purchase)",
            unit="currency",
            encoding="amount",
        ),
        ObservationFeature(
            "tenure_weeks",
            "tenure_weeks",
            0.0,
            RECENCY_CAP,
            heavy_tailed=True,
            description="weeks since the first purchase (a prospect: since it was first seen)",
            unit="weeks",
            encoding="count",
        ),
    ]
    # At most one contact a week, so a channel's count in the cap window is at most its length.
    window = sc.constraints.cap_window_weeks
    for ch in sc.channels:
        features += [
            ObservationFeature(
                f"weeks_since_contact_{ch}",
                "weeks_since_contact",
                0.0,
                CONTACT_RECENCY_CAP,
                heavy_tailed=True,
                description=f"weeks since the last contact on {ch} "
                f"({CONTACT_RECENCY_CAP}: none in the last {CONTACT_RECENCY_CAP} weeks)",
                unit="weeks",
                encoding="count",
            ),
            ObservationFeature(
                f"contacts_in_window_{ch}",
                "contacts_in_window",
                0.0,
                window,
                description=f"contacts on {ch} in the last {window} weeks (the cap window)",
                unit="contacts",
                encoding="count",
            ),
            ObservationFeature(
                f"opt_in_{ch}",
                "opt_in",
                0.0,
                1.0,
                description=f"1 if the customer may be contacted on {ch}, 0 if opted out",
                encoding="flag",
            ),
        ]
    features += [
        ObservationFeature(
            f"stage_{s}",
            "stage",
            0.0,
            1.0,
            description=f"1 if the customer's lifecycle stage is {s}",
            encoding="one-hot",
        )
        for s in STAGES
    ]
    # Segments are latent: attributes hint at them; the label itself only on request.
    for name, attribute in sc.attributes.items():
        about = f" ({attribute.description})" if attribute.description else ""
        features += [
            ObservationFeature(
                f"{name}_{member}",
                name,
                0.0,
                1.0,
                description=f"1 if the customer's {name} is {member}{about}",
                encoding="one-hot",
            )
            for member in attribute.members
        ]
    if sc.segment_observed:
        features += [
            ObservationFeature(
                f"segment_{s}",
                "segment",
                0.0,
                1.0,
                description=f"1 if the customer belongs to segment {s} (the latent label, "
                "observed in this scenario)",
                encoding="one-hot",
            )
            for s in sc.segments
        ]
    features += [
        ObservationFeature(
            "week_of_year_sin",
            "week_of_year_sin",
            -1.0,
            1.0,
            description="sin(2 pi w / 52) of the 0-based calendar week w (0-51)",
            encoding="sin",
        ),
        ObservationFeature(
            "week_of_year_cos",
            "week_of_year_cos",
            -1.0,
            1.0,
            description="cos(2 pi w / 52) of the 0-based calendar week w (0-51)",
            encoding="cos",
        ),
        ObservationFeature(
            "horizon_progress",
            "horizon_progress",
            0.0,
            1.0,
            description="weeks elapsed in the episode / the horizon's weeks",
            encoding="fraction",
        ),
    ]
    return tuple(features)


def observation_feature_names(sc: Scenario) -> list[str]:
    """Names of the observation vector's entries, in order."""
    return [f.name for f in observation_features(sc)]


@dataclass(frozen=True)
class ObservationLayout:
    """The columns of each feature group, so the observation is filled by group, not position.

    A lone feature's column is an ``int`` (its value has shape ``(N,)`` or is a scalar); a
    group's columns are a slice in member order (its value has shape ``(N, members)``).
    """

    width: int
    columns: dict[str, int | slice]

    @classmethod
    def from_scenario(cls, sc: Scenario) -> ObservationLayout:
        features = observation_features(sc)
        by_group: dict[str, list[int]] = {}
        for col, feature in enumerate(features):
            by_group.setdefault(feature.group, []).append(col)
        columns: dict[str, int | slice] = {
            group: cols[0] if features[cols[0]].name == group else _as_slice(cols)
            for group, cols in by_group.items()
        }
        return cls(len(features), columns)

    def assemble(self, n: int, values: Mapping[str, np.ndarray | float]) -> np.ndarray:
        """(n, width) float32 observation from one value per group of the schema."""
        if values.keys() != self.columns.keys():
            missing = sorted(self.columns.keys() - values.keys())
            unknown = sorted(values.keys() - self.columns.keys())
            raise ValueError(
                f"observation values do not match the schema: missing {missing}, unknown {unknown}"
            )
        # Every column belongs to exactly one group, so nothing is left uninitialized.
        obs = np.empty((n, self.width), dtype=np.float32)
        for group, cols in self.columns.items():
            obs[:, cols] = values[group]
        return obs


def one_hot(index: np.ndarray, n_members: int) -> np.ndarray:
    """(N, n_members) float32 rows with a 1 at each ``index`` (the value of a one-hot group)."""
    return np.eye(n_members, dtype=np.float32).take(index, axis=0)


def _as_slice(cols: list[int]) -> slice:
    """Evenly spaced columns as a slice (a view: much faster to fill than an index array)."""
    step = cols[1] - cols[0] if len(cols) > 1 else 1
    if step < 1 or cols != list(range(cols[0], cols[-1] + 1, step)):
        raise ValueError(f"feature group columns {cols} are not evenly spaced")
    return slice(cols[0], cols[-1] + 1, step)
