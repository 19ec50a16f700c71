"""The methods of the benchmark harness, one file each; see :mod:`.base` for the API."""

from __future__ import annotations

from typing import Dict, Type

from .base import Method, MethodContext, MethodUnavailable
from .maml import FirstOrderMAMLMethod, MAMLMethod
from .matchingnet import MatchingNetMethod
from .mmnet import MMNetMethod
from .mmnet_mixed import MMNetMixedMethod, mixed_ranges
from .protonet import ProtoNetMethod

__all__ = ["METHODS", "Method", "MethodContext", "MethodUnavailable", "mixed_ranges"]

#: command-line name -> method class, in leaderboard order
METHODS: Dict[str, Type[Method]] = {
    cls.name: cls
    for cls in (MMNetMethod, MMNetMixedMethod, MAMLMethod, FirstOrderMAMLMethod, ProtoNetMethod, MatchingNetMethod)
}
