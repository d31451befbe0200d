from __future__ import annotations

from container_mcp.errors import ContainerNotFound
from container_mcp.groups import first_error, leaves


def test_nested_groups_flatten_in_order_and_our_error_wins() -> None:
    ours = ContainerNotFound("cntr_x")
    group = BaseExceptionGroup("outer", [ValueError("a"), BaseExceptionGroup("inner", [ours, KeyError("b")])])
    assert [type(e) for e in leaves(group)] == [ValueError, ContainerNotFound, KeyError]
    assert first_error(group) is ours
    assert isinstance(first_error(BaseExceptionGroup("g", [KeyError("only")])), KeyError)
