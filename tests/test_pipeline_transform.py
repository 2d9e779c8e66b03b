"""The train transform crops before it resizes: checked against the resize-then-crop transform it replaced.

The reference `_resize_then_crop` is the previous `TrainTransform` (the whole image resized, padded, cropped,
flipped), kept here with its resampler as a parameter: PIL (what the project did) or cv2.resize (the resampler
the project now uses, so that only the crop-first mapping is being compared). With the same rng seed both take the
same draws (scale, top, left, flip), so the windows, flips and labels must be the same; image pixels agree within
the rounding of OpenCV's warpAffine positions (1/32 pixel): |difference| <= 1 + (dx + dy) / 64 grey levels, dx and
dy the source's largest steps between neighbours, against cv2.resize at every scale and against PIL wherever the
image is enlarged (s >= 1). Where PIL shrinks it low-pass filters, OpenCV does not: those pixels differ by more.
"""

from __future__ import annotations

import io

import jax
import numpy as np
import pytest
from PIL import Image

from difnet_jax.constants import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD
from difnet_jax.data import pipeline, shapes
from difnet_jax.data.normalization import CAFFE_BGR, IMAGENET
from tests.helpers import TINY

HEIGHT, WIDTH = 96, 80  # not square, so that a swapped axis shows


def _resize_then_crop(image, label, crop, rng, resample="pil"):
    """The previous TrainTransform's uint8 image and label (before normalisation), the padding's pixels (a mask),
    the scale and the flip it drew."""
    scale = rng.uniform(0.5, 1.5)
    height, width = max(int(image.shape[0] * scale + 0.5), 1), max(int(image.shape[1] * scale + 0.5), 1)
    if resample == "pil":
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    else:
        import cv2

        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    pad_y, pad_x = max(crop - height, 0), max(crop - width, 0)
    padded = np.empty((height + pad_y, width + pad_x, 3), np.uint8)
    padded[:] = IMAGENET_MEAN.round().astype(np.uint8)
    padded[:height, :width] = image
    label = np.pad(label, ((0, pad_y), (0, pad_x)), constant_values=IGNORE_LABEL)
    padding = np.ones(label.shape, bool)
    padding[:height, :width] = False
    top = rng.integers(0, padded.shape[0] - crop + 1)
    left = rng.integers(0, padded.shape[1] - crop + 1)
    window = (slice(top, top + crop), slice(left, left + crop))
    image, label, padding = padded[window], label[window], padding[window]
    flip = rng.uniform() < 0.5
    if flip:
        image, label, padding = image[:, ::-1], label[:, ::-1], padding[:, ::-1]
    return image, label, padding, scale, bool(flip)


def _scene(index: int):
    image, label = shapes.render_scene(0, "train", index, size=HEIGHT)
    return np.ascontiguousarray(image[:, :WIDTH]), np.ascontiguousarray(label[:, :WIDTH])


def _bound(image: np.ndarray) -> float:
    """1 + (dx + dy) / 64: warpAffine's 1/32-pixel positions (1/64 at most off) times the steepest steps, + rounding."""
    pixels = image.astype(int)
    return 1 + (np.abs(np.diff(pixels, axis=1)).max() + np.abs(np.diff(pixels, axis=0)).max()) / 64


# crop 33: the scaled image (48x40 .. 144x120) is always larger; 161: always smaller (padding in both
# directions); 97: either, and padding in one direction only
@pytest.mark.parametrize("crop", [33, 97, 161])
def test_same_draws_windows_and_labels_as_resize_then_crop(crop):
    transform = pipeline.TrainTransform(crop, normalization=IMAGENET)
    flips, enlarged, shrunk, padded_some, off_by_more_than_one, pixels = set(), 0, 0, 0, 0, 0
    for index in range(24):
        image, label = _scene(index)
        seed = 1000 * crop + index
        rng = np.random.default_rng(seed)
        out = transform.random_map({"image": image, "label": label[..., None]}, rng)
        assert out["image"].shape == (crop, crop, 3) and out["image"].dtype == np.uint8  # normalised on the device
        assert out["label"].shape == (crop, crop) and out["label"].dtype == np.int32
        new = out["image"]

        for resample in ("cv2", "pil"):
            ref_rng = np.random.default_rng(seed)
            ref_image, ref_label, padding, scale, flip = _resize_then_crop(image, label, crop, ref_rng, resample)
            # the same draws, and no others: both generators are left in the same state
            assert ref_rng.bit_generator.state == rng.bit_generator.state
            np.testing.assert_array_equal(out["label"], ref_label)  # every pixel, border and padding included
            difference = np.abs(new.astype(int) - ref_image)
            if resample == "cv2" or scale >= 1:
                assert difference.max() <= _bound(image), (resample, scale)
                off_by_more_than_one += (difference > 1).sum()
                pixels += difference.size
            else:  # PIL low-pass filters when shrinking; OpenCV's bilinear does not
                assert difference.mean() < 8
            assert (new[padding] == IMAGENET.fill).all()  # the padding is the mean colour, exactly
            padded_some += padding.any()
        flips.add(flip)
        enlarged += scale >= 1
        shrunk += scale < 1
    assert flips == {True, False} and enlarged and shrunk
    assert bool(padded_some) == (crop > 40)  # 48x40 is the smallest scaled image
    assert off_by_more_than_one / pixels < 0.01  # nearly every pixel within interpolation rounding


def test_padding_fills_the_mean_colour_and_void():
    image, label = _scene(0)
    crop = 161  # larger than any scaled image: padding on the bottom and on the right (on the left once flipped)
    for flip in (False, True):
        window, window_label = pipeline.scaled_crop(image, label, (100, 120), 0, 0, crop, flip, fill=IMAGENET.fill)
        assert window.shape == (crop, crop, 3) and window_label.shape == (crop, crop)
        columns = slice(0, crop - 120) if flip else slice(120, crop)
        image_columns = slice(crop - 120, crop) if flip else slice(0, 120)
        assert (window[100:] == IMAGENET.fill).all() and (window[:, columns] == IMAGENET.fill).all()
        assert (window_label[100:] == IGNORE_LABEL).all() and (window_label[:, columns] == IGNORE_LABEL).all()
        assert (window_label[:100, image_columns] != IGNORE_LABEL).any()
        wide = pipeline.scaled_crop(image, label.astype(np.int32), (100, 120), 0, 0, crop, flip,
                              fill=IMAGENET.fill)[1]  # np.pad's path
        assert wide.dtype == np.int32 and np.array_equal(wide, window_label)


def test_the_transform_pads_and_normalises_as_configured():
    """config.data.normalization reaches the training crops: the authors' BGR Caffe-mean input pads with its own
    mean colour (0 once normalised, on the device, to `CAFFE_BGR.apply`'s values exactly); the same draws give the
    same crop."""
    image, label = _scene(0)
    element = {"image": image, "label": label}
    for normalization in (IMAGENET, CAFFE_BGR):
        transform = pipeline.TrainTransform(161, 0.5, 0.51, normalization=normalization)  # always padded
        out = transform.random_map(dict(element), np.random.default_rng(0))
        assert out["image"].dtype == np.uint8
        padded = np.zeros(out["label"].shape, bool)
        padded[image.shape[0] // 2 + 2:] = True  # below the scaled image (scale < 0.51), whichever way it flips
        assert (out["label"][padded] == IGNORE_LABEL).all()
        assert (out["image"][padded] == np.array(normalization.fill, np.uint8)).all()
        on_device = np.asarray(jax.jit(normalization.apply_on_device)(out["image"][None]))[0]
        np.testing.assert_array_equal(on_device, normalization.apply(out["image"]))
        np.testing.assert_allclose(on_device[padded], 0.0, atol=0.6)
        reference = pipeline.TrainTransform(161, 0.5, 0.51, normalization=IMAGENET).random_map(
            dict(element), np.random.default_rng(0))
        unpadded = out["label"] != IGNORE_LABEL  # image pixels (padding is void; so is the scenes' void band)
        np.testing.assert_array_equal(out["image"][unpadded], reference["image"][unpadded])


def test_flip_mirrors_the_window():
    image, label = _scene(3)
    for scaled, top, left, crop in (((130, 110), 20, 30, 65), ((60, 50), 0, 0, 65), ((144, 120), 40, 55, 65)):
        plain, plain_label = pipeline.scaled_crop(image, label, scaled, top, left, crop, fill=IMAGENET.fill)
        mirrored, mirrored_label = pipeline.scaled_crop(image, label, scaled, top, left, crop, flip=True,
                                                        fill=IMAGENET.fill)
        np.testing.assert_array_equal(mirrored_label, plain_label[:, ::-1])
        assert np.abs(mirrored.astype(int) - plain[:, ::-1]).max() <= _bound(image)


def test_window_outside_the_scaled_image_is_refused():
    image, label = _scene(0)
    with pytest.raises(ValueError, match="outside"):
        pipeline.scaled_crop(image, label, (50, 40), 50, 0, 33, fill=IMAGENET.fill)


def test_nearest_indices_are_pils():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 700))
        scaled = max(int(size * rng.uniform(0.5, 1.5) + 0.5), 1)
        row = Image.fromarray(np.arange(size, dtype=np.int32)[None].repeat(2, 0))  # pixel value = its column
        expected = np.asarray(row.resize((scaled, 2), Image.NEAREST))[0]
        np.testing.assert_array_equal(pipeline.nearest_indices(size, scaled), expected)


def test_normalize_is_the_arithmetic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)
    expected = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    for value in (image, image[0], image[0, :, ::-1], image[0].astype(np.float32)):
        result = pipeline.normalize(value, IMAGENET)
        assert result.dtype == np.float32 and result.shape == value.shape
    np.testing.assert_array_equal(pipeline.normalize(image, IMAGENET), expected)  # batches
    np.testing.assert_array_equal(pipeline.normalize(image[0], IMAGENET), expected[0])
    np.testing.assert_array_equal(pipeline.normalize(image[0, :, ::-1], IMAGENET),  # not contiguous
                                  expected[0, :, ::-1])
    np.testing.assert_array_equal(pipeline.normalize(image[0].astype(np.float32), IMAGENET), expected[0])
    every_value = np.stack([np.arange(256, dtype=np.uint8), np.arange(256)[::-1].astype(np.uint8),
                            np.roll(np.arange(256, dtype=np.uint8), 7)], -1).reshape(1, 16, 16, 3)
    for normalization in (IMAGENET, CAFFE_BGR):  # the train step's (on the device): the same float32 values
        for value in (image, every_value):  # caffe_bgr's by subtraction, imagenet's by its table
            np.testing.assert_array_equal(np.asarray(jax.jit(normalization.apply_on_device)(value)),
                                          normalization.apply(value))


def test_pad_to_pads_bottom_right_only():
    image, label = _scene(1)
    padded, padded_label = pipeline.pad_to(image, label, 100, 90, IMAGENET)
    assert padded.shape == (100, 90, 3) and padded_label.shape == (100, 90)
    np.testing.assert_array_equal(padded[:HEIGHT, :WIDTH], image)
    np.testing.assert_array_equal(padded_label[:HEIGHT, :WIDTH], label)
    assert (padded[HEIGHT:] == IMAGENET.fill).all() and (padded[:, WIDTH:] == IMAGENET.fill).all()
    assert (padded_label[HEIGHT:] == IGNORE_LABEL).all() and (padded_label[:, WIDTH:] == IGNORE_LABEL).all()
    same, same_label = pipeline.pad_to(image, label, 50, 50, IMAGENET)  # already large enough
    assert same is image and same_label is label


def test_the_loader_decodes_the_stored_bytes_itself(tiny_data_dir):
    source = pipeline.source(TINY, "train", tiny_data_dir)
    encoded = pipeline.encoded_images(source)
    assert isinstance(encoded[0]["image"], bytes) and isinstance(encoded[0]["label"], bytes)
    assert pipeline.encoded_images(encoded) is encoded and pipeline.encoded_images([]) == []
    transform = pipeline.TrainTransform(65, normalization=IMAGENET)
    for index in range(4):  # PNG: the same pixels as TFDS's decode, so the same outputs
        from_bytes = transform.random_map(encoded[index], np.random.default_rng(index))
        from_arrays = transform.random_map(source[index], np.random.default_rng(index))
        np.testing.assert_array_equal(from_bytes["image"], from_arrays["image"])
        np.testing.assert_array_equal(from_bytes["label"], from_arrays["label"])


def test_jpeg_bytes_decode_as_pil_does():
    image, label = _scene(5)
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
    Image.fromarray(label).save(png, format="PNG")
    decoded = np.asarray(Image.open(jpeg))  # TFDS's decoder without OpenCV
    transform = pipeline.TrainTransform(57, normalization=IMAGENET)
    for seed in range(6):  # both libjpeg-turbo: the same pixels, give or take a grey level
        from_bytes = transform.random_map({"image": jpeg.getvalue(), "label": png.getvalue()},
                                          np.random.default_rng(seed))
        from_arrays = transform.random_map({"image": decoded, "label": label}, np.random.default_rng(seed))
        assert np.abs(from_bytes["image"].astype(int) - from_arrays["image"]).max() <= 1
        np.testing.assert_array_equal(from_bytes["label"], from_arrays["label"])


def test_unreadable_bytes_are_refused():
    image, label = _scene(0)
    with pytest.raises(ValueError, match="not a readable PNG, JPEG or BMP"):
        pipeline.TrainTransform(33, normalization=IMAGENET).random_map({"image": b"not an image", "label": label},
                                               np.random.default_rng(0))


def test_a_16_bit_rgb_png_is_stored_as_pil_reads_it(tmp_path):
    """PIL keeps a 16-bit PNG's high byte and calls it "RGB"; OpenCV (TFDS's and the loader's decoder) would wrap
    the 16-bit values: the builders store such a file re-encoded at 8 bits."""
    import cv2
    from etils import epath

    from difnet_jax.data import example_files

    wide = np.random.default_rng(0).integers(0, 65535, (5, 6, 3)).astype(np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), wide)
    data, size = example_files.read_image(epath.Path(path))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert size == (5, 6) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[..., ::-1], np.asarray(Image.open(path).convert("RGB")))


def test_scale_step_draws_the_references_discrete_scales():
    """data.scale_step 0.25 over (0.5, 2.0): each of 0.5, 0.75, ..., 2.0 (DeepLabv3+'s get_random_scale); 0: uniform."""
    rng = np.random.default_rng(0)
    stepped = pipeline.TrainTransform(33, 0.5, 2.0, scale_step=0.25, normalization=IMAGENET)
    drawn = [stepped.draw_scale(rng) for _ in range(700)]
    assert sorted(set(drawn)) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert min(drawn.count(s) for s in set(drawn)) > 60  # about 100 each
    uniform = [pipeline.TrainTransform(33, 0.5, 2.0, normalization=IMAGENET).draw_scale(rng) for _ in range(200)]
    assert len(set(uniform)) == 200 and 0.5 <= min(uniform) and max(uniform) < 2.0
