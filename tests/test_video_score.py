"""builder.evaluate.video_score: the per-object count `make demo` grades itself with."""

from __future__ import annotations

from builder.evaluate.video_score import ObjectTally

A = (0.1, 0.1, 0.3, 0.3)
B = (0.6, 0.6, 0.8, 0.9)
NEAR_A = (0.11, 0.1, 0.31, 0.3)


def test_each_object_is_right_wrong_duplicated_or_missed() -> None:
    t = ObjectTally()
    t.add([A, B], [0, 1], [NEAR_A, B], [0, 1])  # both right
    t.add([A, B], [0, 1], [NEAR_A, (0.6, 0.6, 0.8, 0.9)], [1, 1])  # A wrong class, B right
    t.add([A, B], [0, 1], [A, NEAR_A], [0, 1])  # A twice ("circle" and "square" on one object), B missed
    t.add([A], [0], [A, (0.5, 0.0, 0.55, 0.05)], [0, 2])  # A right, one stray
    t.add([], [], [B], [1])  # an empty frame with a box: a stray
    t.add([A], [0], [], [])  # nothing seen: missed
    assert (t.frames, t.objects) == (6, 8)
    assert (t.right, t.wrong_class, t.duplicated, t.missed, t.strays) == (4, 1, 1, 2, 2)
    assert t.right_share == 0.5
    assert "4/8 objects (50.0%)" in t.line()
    assert t.as_dict()["right_share"] == 0.5


def test_a_box_that_overlaps_too_little_is_a_miss_and_a_stray() -> None:
    t = ObjectTally()
    t.add([A], [0], [(0.2, 0.2, 0.4, 0.4)], [0])  # IoU 1/7 < 0.5
    assert (t.right, t.missed, t.strays) == (0, 1, 1)
    assert ObjectTally().right_share == 0.0
