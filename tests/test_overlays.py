"""Region overlays people can read: labels on a background (legible on a dark photo), regions under the score
threshold left out, and a legend that says what the boxes and numbers are."""

import numpy as np
from PIL import Image

from image_emotion import figures

RED = np.array(figures.REGION)


def _near(pixels: np.ndarray, colour) -> np.ndarray:
    return np.abs(pixels.astype(int) - np.asarray(colour)).sum(axis=-1) < 30


def test_a_region_is_drawn_with_its_label_on_a_background_and_a_zero_score_box_is_not():
    dark = Image.new("RGB", (400, 320), (10, 10, 10))  # shown at its own size (320-640 px)
    regions = [
        {"x1": 20.0, "y1": 30.0, "x2": 150.0, "y2": 140.0, "score": 0.83},
        {"x1": 0.0, "y1": 0.0, "x2": 399.0, "y2": 319.0, "score": 0.0},  # the padding box: not a region
    ]
    drawn = np.asarray(figures.region_overlay(dark, regions, "sadness: probability 0.61"))
    band = figures.CAPTION_BAND
    image = drawn[band : band + 320, :400]
    assert _near(image[30, 40:140], RED).all()  # the region's top edge
    assert not _near(image[319, 10:390], RED).any() and not _near(image[200, 395:400], RED).any()  # no padding box
    label = image[31:48, 22:60]  # the "1 · 0.83" label inside the box's corner
    assert _near(label, RED).mean() > 0.4 and (label.min(axis=-1) > 150).mean() > 0.03  # light text on red
    legend = drawn[band + 320 :]
    assert legend.shape[0] >= 30 and _near(legend, RED).any()  # a legend under the image, with the red swatch
    assert (legend < 100).all(axis=-1).any()  # and its text


def test_lists_and_named_regions_draw_the_same_and_a_threshold_leaves_out_the_weak():
    image = Image.new("RGB", (360, 300), (240, 240, 240))
    as_lists = [[10, 10, 60, 50, 0.9], [50, 40, 110, 90, 0.2]]
    as_dicts = figures.region_dicts(as_lists)
    assert as_dicts[1] == {"x1": 50.0, "y1": 40.0, "x2": 110.0, "y2": 90.0, "score": 0.2}
    both = np.asarray(figures.region_overlay(image, as_lists, "x"))
    assert np.array_equal(both, np.asarray(figures.region_overlay(image, as_dicts, "x")))
    strict = np.asarray(figures.region_overlay(image, as_dicts, "x", min_score=0.5))
    band = figures.CAPTION_BAND
    assert _near(both[band + 90, 60:100], RED).all() and not _near(strict[band + 90, 60:100], RED).any()


def test_a_legend_wider_than_a_small_image_widens_the_picture_rather_than_cutting_its_text():
    tiny = Image.new("RGB", (48, 48), "white")
    drawn = figures.region_overlay(tiny, [[4, 4, 40, 40, 0.7]], "joy")
    assert drawn.width > 200 and drawn.height > 48 + figures.CAPTION_BAND


def test_labels_of_regions_that_share_a_corner_are_stacked_not_hidden():
    dark = Image.new("RGB", (400, 320), (10, 10, 10))
    corner = [[20, 30, 180, 150, 0.9], [20, 30, 120, 100, 0.5], [20, 30, 90, 140, 0.3]]
    one = np.asarray(figures.region_overlay(dark, corner[:1], "x"))
    three = np.asarray(figures.region_overlay(dark, corner, "x"))
    column = slice(figures.CAPTION_BAND + 31, figures.CAPTION_BAND + 100), 30  # down the labels' left part
    one_rows, three_rows = _near(one[column], RED).sum(), _near(three[column], RED).sum()
    assert three_rows > 2.5 * one_rows > 0  # three label backgrounds one under the other


def test_small_images_are_enlarged_and_large_ones_reduced_to_a_readable_size():
    assert figures.overlay_scale((80, 60)) == 4.0 and figures.overlay_scale((1280, 720)) == 0.5
    assert figures.overlay_scale((500, 400)) == 1.0
    small = figures.region_overlay(Image.new("RGB", (80, 60), "black"), [[10, 10, 40, 30, 0.9]], "a long caption")
    image = np.asarray(small)[figures.CAPTION_BAND : figures.CAPTION_BAND + 240, :320]
    assert _near(image[40, 45:155], RED).all()  # the box's top edge at 4 × (10, 40..) in the enlarged image
