"""Stack names: valid CloudFormation names, deterministic, and unique per (dispatch, node)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ec2_executor.cloud.stacks import stack_name

VALID = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
ids = st.text(min_size=0, max_size=300)
nodes = st.one_of(st.integers(min_value=-1, max_value=10**9), st.text(max_size=50))


@given(ids, nodes)
def test_always_a_valid_cloudformation_name(dispatch_id: str, node_id: int | str) -> None:
    name = stack_name(dispatch_id, node_id)
    assert VALID.match(name), name
    assert len(name) <= 128
    assert name == stack_name(dispatch_id, node_id)


@given(st.lists(st.tuples(ids, st.integers(-1, 10**9)), min_size=2, max_size=50, unique=True))
def test_distinct_electrons_get_distinct_names(electrons: list[tuple[str, int]]) -> None:
    names = {stack_name(d, n) for d, n in electrons}
    assert len(names) == len(electrons)


def test_a_uuid_dispatch_stays_readable() -> None:
    name = stack_name("8a7d2f3e-1b2c-4d5e-9f00-112233445566", 3)
    assert name.startswith("ec2-executor-8a7d2f3e-1b2c-4d5e-9f00-112233445566-3-")
