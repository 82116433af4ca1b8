from __future__ import annotations

import pytest

from gateway.engine.prefix_cache import common_prefix


@pytest.mark.parametrize("a, b, expected", [
    ([], [], 0),
    ([], [1, 2], 0),
    ([1, 2, 3], [1, 2, 3], 3),
    ([1, 2, 3], [1, 2, 3, 4], 3),
    ([1, 2, 3, 4], [1, 2], 2),
    ([9, 2, 3], [1, 2, 3], 0),
    ([1, 2, 3], [1, 2, 4], 2),
    (list(range(1000)), [*range(999), -1], 999),
    (list(range(1000)), [*range(500), -1, *range(501, 1000)], 500),
])
def test_common_prefix(a, b, expected):
    assert common_prefix(a, b) == expected
    assert common_prefix(b, a) == expected


def test_common_prefix_matches_a_token_by_token_scan_at_every_split():
    base = list(range(257))
    for cut in range(len(base)):
        other = base[:cut] + [-1] + base[cut + 1:]
        assert common_prefix(base, other) == cut
