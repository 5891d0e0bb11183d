"""Sliding-window counter stores: the in-process default and Redis."""

from authz.limits.base import CounterKey, CounterStore, Hit, HitResult, LimitState, StoreUnavailable

__all__ = ["CounterKey", "CounterStore", "Hit", "HitResult", "LimitState", "StoreUnavailable"]
