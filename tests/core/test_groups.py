from __future__ import annotations

from container_mcp.errors import ContainerNotFound
from container_mcp.groups import leaves
from container_mcp.service import _first_leaf


def test_nested_groups_flatten_in_order_and_our_error_wins() -> None:
    ours = ContainerNotFound("cntr_x")
    group = BaseExceptionGroup("outer", [ValueError("a"), BaseExceptionGroup("inner", [ours, KeyError("b")])])
    assert [type(e) for e in leaves(group)] == [ValueError, ContainerNotFound, KeyError]
    assert _first_leaf(group) is ours
    assert isinstance(_first_leaf(BaseExceptionGroup("g", [KeyError("only")])), KeyError)
