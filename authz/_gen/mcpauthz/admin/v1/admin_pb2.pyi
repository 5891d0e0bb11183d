import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApprovalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATUS_UNSPECIFIED: _ClassVar[ApprovalStatus]
    APPROVAL_STATUS_PENDING: _ClassVar[ApprovalStatus]
    APPROVAL_STATUS_APPROVED: _ClassVar[ApprovalStatus]
    APPROVAL_STATUS_DENIED: _ClassVar[ApprovalStatus]
    APPROVAL_STATUS_IN_USE: _ClassVar[ApprovalStatus]
APPROVAL_STATUS_UNSPECIFIED: ApprovalStatus
APPROVAL_STATUS_PENDING: ApprovalStatus
APPROVAL_STATUS_APPROVED: ApprovalStatus
APPROVAL_STATUS_DENIED: ApprovalStatus
APPROVAL_STATUS_IN_USE: ApprovalStatus

class Approval(_message.Message):
    __slots__ = ("id", "status", "identity", "grant", "tool", "arguments_json", "rule", "reason", "approvers", "approver_claims_json", "requested_at", "expires_at", "decided_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_CLAIMS_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: ApprovalStatus
    identity: str
    grant: str
    tool: str
    arguments_json: str
    rule: str
    reason: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    approver_claims_json: str
    requested_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    decided_by: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[ApprovalStatus, str]] = ..., identity: _Optional[str] = ..., grant: _Optional[str] = ..., tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., approver_claims_json: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals", "next_page_token")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    next_page_token: str
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetApprovalRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    note: str
    def __init__(self, id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class CounterRequest(_message.Message):
    __slots__ = ("counter", "scope", "subject")
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    counter: str
    scope: str
    subject: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, counter: _Optional[str] = ..., scope: _Optional[str] = ..., subject: _Optional[_Iterable[str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("counter", "scope", "subject", "used", "remaining", "limit", "window_seconds", "retry_after_seconds")
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    counter: str
    scope: str
    subject: _containers.RepeatedScalarFieldContainer[str]
    used: int
    remaining: int
    limit: int
    window_seconds: int
    retry_after_seconds: float
    def __init__(self, counter: _Optional[str] = ..., scope: _Optional[str] = ..., subject: _Optional[_Iterable[str]] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ..., limit: _Optional[int] = ..., window_seconds: _Optional[int] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("version", "source", "warnings", "reload_failed", "reload_errors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    RELOAD_FAILED_FIELD_NUMBER: _ClassVar[int]
    RELOAD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    version: str
    source: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    reload_failed: bool
    reload_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., source: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., reload_failed: _Optional[bool] = ..., reload_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class GrantInfo(_message.Message):
    __slots__ = ("label", "created_at", "rotated_at", "has_own_policy", "policy_grant")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    HAS_OWN_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_GRANT_FIELD_NUMBER: _ClassVar[int]
    label: str
    created_at: _timestamp_pb2.Timestamp
    rotated_at: _timestamp_pb2.Timestamp
    has_own_policy: bool
    policy_grant: str
    def __init__(self, label: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rotated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., has_own_policy: _Optional[bool] = ..., policy_grant: _Optional[str] = ...) -> None: ...

class CreateGrantRequest(_message.Message):
    __slots__ = ("label", "policy_text", "policy_grant")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_TEXT_FIELD_NUMBER: _ClassVar[int]
    POLICY_GRANT_FIELD_NUMBER: _ClassVar[int]
    label: str
    policy_text: str
    policy_grant: str
    def __init__(self, label: _Optional[str] = ..., policy_text: _Optional[str] = ..., policy_grant: _Optional[str] = ...) -> None: ...

class GrantWithToken(_message.Message):
    __slots__ = ("grant", "token")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    grant: GrantInfo
    token: str
    def __init__(self, grant: _Optional[_Union[GrantInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[GrantInfo]
    def __init__(self, grants: _Optional[_Iterable[_Union[GrantInfo, _Mapping]]] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("label",)
    LABEL_FIELD_NUMBER: _ClassVar[int]
    label: str
    def __init__(self, label: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("upstream", "name", "fingerprint", "definition_json", "pending_fingerprint", "pending_json", "risk", "removed", "oversized", "accepted_by", "first_seen", "last_seen")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    PENDING_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PENDING_JSON_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    OVERSIZED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_BY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    name: str
    fingerprint: str
    definition_json: str
    pending_fingerprint: str
    pending_json: str
    risk: str
    removed: bool
    oversized: bool
    accepted_by: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, upstream: _Optional[str] = ..., name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., definition_json: _Optional[str] = ..., pending_fingerprint: _Optional[str] = ..., pending_json: _Optional[str] = ..., risk: _Optional[str] = ..., removed: _Optional[bool] = ..., oversized: _Optional[bool] = ..., accepted_by: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ("upstream",)
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    def __init__(self, upstream: _Optional[str] = ...) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

class AcceptToolRequest(_message.Message):
    __slots__ = ("upstream", "name", "fingerprint", "note")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    name: str
    fingerprint: str
    note: str
    def __init__(self, upstream: _Optional[str] = ..., name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...
