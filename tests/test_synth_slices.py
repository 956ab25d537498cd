"""The flywheel benchmark's hard slice (builder.data.synth_slices): dim scenes keep their objects, and a
camera's JPEG of a scene is recognised as that scene (the scripted reviewer relies on it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from helpers import read_frames

from builder.data.synth import DEFAULT_CLASSES
from builder.data.synth_slices import DIM_GAIN, nearest_scene, render_scene, render_scenes, write_slideshow


def test_dim_scene_has_the_same_objects_at_a_fraction_of_the_light() -> None:
    normal, dim = render_scene(11, 128, DEFAULT_CLASSES), render_scene(11, 128, DEFAULT_CLASSES, hard=True)
    assert dim.hard and not normal.hard
    np.testing.assert_array_equal(normal.boxes, dim.boxes)
    np.testing.assert_array_equal(normal.classes, dim.classes)
    ratio = dim.image.mean() / normal.image.mean()
    assert DIM_GAIN[0] * 0.8 < ratio < DIM_GAIN[1] * 1.3, ratio
    assert len(normal.classes) >= 1 and (normal.boxes[:, 2:] > normal.boxes[:, :2]).all()
    assert (normal.boxes >= 0).all() and (normal.boxes <= 128).all()


def test_a_camera_frame_is_matched_to_its_scene_through_the_video(tmp_path: Path) -> None:
    hard = [i % 2 == 1 for i in range(12)]
    scenes = render_scenes([500 + i for i in range(12)], 96, DEFAULT_CLASSES, hard)
    video = write_slideshow(scenes, tmp_path / "v.avi", fps=5, repeat=2)
    frames = read_frames(video)
    assert len(frames) == 24
    for i, frame in enumerate(frames):
        # as the node sends it to the collector: a JPEG of the decoded frame
        jpeg = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
        scene, mad = nearest_scene(jpeg, scenes)
        assert scene.seed == 500 + i // 2, (i, scene.seed, mad)
        assert mad < 12.0  # the bench's reviewer rejects frames further than this from every scene
