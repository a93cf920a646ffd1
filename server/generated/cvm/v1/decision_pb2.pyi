import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_SOURCE_UNSPECIFIED: _ClassVar[DecisionSource]
    DECISION_SOURCE_POLICY: _ClassVar[DecisionSource]
    DECISION_SOURCE_BASELINE: _ClassVar[DecisionSource]

class ExplorationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLORATION_MODE_UNSPECIFIED: _ClassVar[ExplorationMode]
    EXPLORATION_MODE_EPSILON: _ClassVar[ExplorationMode]
    EXPLORATION_MODE_SOFTMAX: _ClassVar[ExplorationMode]
    EXPLORATION_MODE_POLICY: _ClassVar[ExplorationMode]

class LearningMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARNING_MODE_UNSPECIFIED: _ClassVar[LearningMode]
    LEARNING_MODE_ONLINE: _ClassVar[LearningMode]
    LEARNING_MODE_APPRENTICE: _ClassVar[LearningMode]
DECISION_SOURCE_UNSPECIFIED: DecisionSource
DECISION_SOURCE_POLICY: DecisionSource
DECISION_SOURCE_BASELINE: DecisionSource
EXPLORATION_MODE_UNSPECIFIED: ExplorationMode
EXPLORATION_MODE_EPSILON: ExplorationMode
EXPLORATION_MODE_SOFTMAX: ExplorationMode
EXPLORATION_MODE_POLICY: ExplorationMode
LEARNING_MODE_UNSPECIFIED: LearningMode
LEARNING_MODE_ONLINE: LearningMode
LEARNING_MODE_APPRENTICE: LearningMode

class ModelRef(_message.Message):
    __slots__ = ("model_id", "model_version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: str
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("offer_id", "channel")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    channel: str
    def __init__(self, offer_id: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class NamedFeatures(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class NameList(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class Eligibility(_message.Message):
    __slots__ = ("eligible_offers", "excluded_offers", "eligible_channels", "excluded_channels", "contact_required")
    ELIGIBLE_OFFERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_OFFERS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CONTACT_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    eligible_offers: NameList
    excluded_offers: _containers.RepeatedScalarFieldContainer[str]
    eligible_channels: NameList
    excluded_channels: _containers.RepeatedScalarFieldContainer[str]
    contact_required: bool
    def __init__(self, eligible_offers: _Optional[_Union[NameList, _Mapping]] = ..., excluded_offers: _Optional[_Iterable[str]] = ..., eligible_channels: _Optional[_Union[NameList, _Mapping]] = ..., excluded_channels: _Optional[_Iterable[str]] = ..., contact_required: _Optional[bool] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("event_id", "customer_id", "action", "action_index", "propensity", "probabilities", "explored", "source")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    customer_id: str
    action: Action
    action_index: int
    propensity: float
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    explored: bool
    source: DecisionSource
    def __init__(self, event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., action_index: _Optional[int] = ..., propensity: _Optional[float] = ..., probabilities: _Optional[_Iterable[float]] = ..., explored: _Optional[bool] = ..., source: _Optional[_Union[DecisionSource, str]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("event_id", "customer_id", "dense", "named", "eligibility", "baseline_action", "return_probabilities")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    ELIGIBILITY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ACTION_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    customer_id: str
    dense: FeatureVector
    named: NamedFeatures
    eligibility: Eligibility
    baseline_action: Action
    return_probabilities: bool
    def __init__(self, event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., dense: _Optional[_Union[FeatureVector, _Mapping]] = ..., named: _Optional[_Union[NamedFeatures, _Mapping]] = ..., eligibility: _Optional[_Union[Eligibility, _Mapping]] = ..., baseline_action: _Optional[_Union[Action, _Mapping]] = ..., return_probabilities: _Optional[bool] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision", "model")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    model: ModelRef
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class RowEligibilities(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[Eligibility]
    def __init__(self, rows: _Optional[_Iterable[_Union[Eligibility, _Mapping]]] = ...) -> None: ...

class DecideBatchRequest(_message.Message):
    __slots__ = ("event_ids", "customer_ids", "features", "n_features", "feature_names", "shared_eligibility", "row_eligibilities", "baseline_actions", "return_probabilities", "packed")
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    SHARED_ELIGIBILITY_FIELD_NUMBER: _ClassVar[int]
    ROW_ELIGIBILITIES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[float]
    n_features: int
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    shared_eligibility: Eligibility
    row_eligibilities: RowEligibilities
    baseline_actions: _containers.RepeatedCompositeFieldContainer[Action]
    return_probabilities: bool
    packed: bool
    def __init__(self, event_ids: _Optional[_Iterable[str]] = ..., customer_ids: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[float]] = ..., n_features: _Optional[int] = ..., feature_names: _Optional[_Iterable[str]] = ..., shared_eligibility: _Optional[_Union[Eligibility, _Mapping]] = ..., row_eligibilities: _Optional[_Union[RowEligibilities, _Mapping]] = ..., baseline_actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., return_probabilities: _Optional[bool] = ..., packed: _Optional[bool] = ...) -> None: ...

class PackedDecisions(_message.Message):
    __slots__ = ("event_ids", "action_indices", "propensities", "explored", "sources", "probabilities")
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_INDICES_FIELD_NUMBER: _ClassVar[int]
    PROPENSITIES_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    action_indices: _containers.RepeatedScalarFieldContainer[int]
    propensities: _containers.RepeatedScalarFieldContainer[float]
    explored: _containers.RepeatedScalarFieldContainer[bool]
    sources: _containers.RepeatedScalarFieldContainer[DecisionSource]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, event_ids: _Optional[_Iterable[str]] = ..., action_indices: _Optional[_Iterable[int]] = ..., propensities: _Optional[_Iterable[float]] = ..., explored: _Optional[_Iterable[bool]] = ..., sources: _Optional[_Iterable[_Union[DecisionSource, str]]] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("decisions", "model", "packed")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    model: ModelRef
    packed: PackedDecisions
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., packed: _Optional[_Union[PackedDecisions, _Mapping]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("event_id", "reward", "purchase", "spend", "opt_out", "reported_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    reward: float
    purchase: bool
    spend: float
    opt_out: bool
    reported_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., reward: _Optional[float] = ..., purchase: _Optional[bool] = ..., spend: _Optional[float] = ..., opt_out: _Optional[bool] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    def __init__(self, outcome: _Optional[_Union[Outcome, _Mapping]] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

class ReportOutcomesRequest(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class ReportOutcomesResponse(_message.Message):
    __slots__ = ("recorded", "duplicates")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    duplicates: int
    def __init__(self, recorded: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class GetPolicyInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CatalogAction(_message.Message):
    __slots__ = ("index", "name", "action")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    action: Action
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., action: _Optional[_Union[Action, _Mapping]] = ...) -> None: ...

class ExplorationSettings(_message.Message):
    __slots__ = ("mode", "epsilon", "temperature", "learning_mode")
    MODE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_MODE_FIELD_NUMBER: _ClassVar[int]
    mode: ExplorationMode
    epsilon: float
    temperature: float
    learning_mode: LearningMode
    def __init__(self, mode: _Optional[_Union[ExplorationMode, str]] = ..., epsilon: _Optional[float] = ..., temperature: _Optional[float] = ..., learning_mode: _Optional[_Union[LearningMode, str]] = ...) -> None: ...

class GetPolicyInfoResponse(_message.Message):
    __slots__ = ("model", "actions", "feature_names", "exploration", "active", "rollback_target", "rollback_depth", "features")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_TARGET_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    actions: _containers.RepeatedCompositeFieldContainer[CatalogAction]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    exploration: ExplorationSettings
    active: ActivationRef
    rollback_target: ActivationRef
    rollback_depth: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureInfo]
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[CatalogAction, _Mapping]]] = ..., feature_names: _Optional[_Iterable[str]] = ..., exploration: _Optional[_Union[ExplorationSettings, _Mapping]] = ..., active: _Optional[_Union[ActivationRef, _Mapping]] = ..., rollback_target: _Optional[_Union[ActivationRef, _Mapping]] = ..., rollback_depth: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureInfo, _Mapping]]] = ...) -> None: ...

class FeatureInfo(_message.Message):
    __slots__ = ("name", "description", "unit", "encoding", "group", "min", "max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    unit: str
    encoding: str
    group: str
    min: float
    max: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., unit: _Optional[str] = ..., encoding: _Optional[str] = ..., group: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class ActivationRef(_message.Message):
    __slots__ = ("model", "seq", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    seq: int
    reason: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LoadBundleRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class LoadBundleResponse(_message.Message):
    __slots__ = ("active_model",)
    ACTIVE_MODEL_FIELD_NUMBER: _ClassVar[int]
    active_model: ModelRef
    def __init__(self, active_model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class RollbackBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RollbackBundleResponse(_message.Message):
    __slots__ = ("active_model",)
    ACTIVE_MODEL_FIELD_NUMBER: _ClassVar[int]
    active_model: ModelRef
    def __init__(self, active_model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...
