"""Image <-> numpy conversion without cv_bridge: every encoding, every malformed case."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from helpers.camera_formats import encode_camera

from gplq_ros.onboard.image_codec import (ENCODINGS, ImageFormatError, compressed_to_rgb, image_to_numpy,
                                          image_to_rgb, numpy_to_image, rgb_to_compressed)


def sample(encoding, h=6, w=5, seed=0):
    dtype, ch = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    if encoding in ('yuv422_yuy2', 'uyvy', 'yuv422', 'nv12', 'nv21'):
        w += w % 2                                     # chroma shared by pixel pairs
    if encoding in ('nv12', 'nv21'):
        h = h * 3 // 2                                 # the whole buffer: Y rows, then UV rows
    shape = (h, w, ch) if ch > 1 else (h, w)
    if dtype is np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def fake(**fields):
    """A message-shaped object for decoder tests that need impossible field values."""
    base = dict(height=2, width=2, encoding='rgb8', step=6, is_bigendian=0, data=bytes(12))
    base.update(fields)
    return SimpleNamespace(**base)


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('pad', [0, 7])
@pytest.mark.parametrize('bigendian', [False, True])
def test_roundtrip_every_encoding(encoding, pad, bigendian):
    arr = sample(encoding)
    row = arr.shape[1] * arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1)
    msg = numpy_to_image(arr, encoding, step=row + pad, bigendian=bigendian)
    assert msg.step == row + pad and len(msg.data) == msg.step * arr.shape[0]
    assert msg.height == (arr.shape[0] * 2 // 3 if encoding in ('nv12', 'nv21') else arr.shape[0])
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_bigendian_bytes_are_really_bigendian():
    msg = numpy_to_image(np.array([[1, 258]], np.uint16), 'mono16', bigendian=True)
    assert bytes(msg.data) == b'\x00\x01\x01\x02'
    msg = numpy_to_image(np.array([[1, 258]], np.uint16), 'mono16', bigendian=False)
    assert bytes(msg.data) == b'\x01\x00\x02\x01'


def test_to_rgb_for_each_colour_encoding():
    rgb = sample('rgb8')
    assert np.array_equal(image_to_rgb(numpy_to_image(rgb, 'rgb8')), rgb)
    assert np.array_equal(image_to_rgb(numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8')), rgb)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(numpy_to_image(rgba, 'rgba8')), rgb)
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    assert np.array_equal(image_to_rgb(numpy_to_image(bgra, 'bgra8')), rgb)
    gray = sample('mono8')
    assert np.array_equal(image_to_rgb(numpy_to_image(gray, 'mono8')), np.stack([gray] * 3, -1))


def test_yuv_encodings_to_rgb_match_opencv_i420():
    """The same YUV samples laid out as YUYV, UYVY, NV12 and NV21 decode like OpenCV's I420."""
    rgb = np.random.default_rng(1).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    want = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), cv2.COLOR_YUV2RGB_I420)
    # 4:2:2 layouts repeat each 4:2:0 chroma row for two image rows -> the same RGB as I420
    for enc, pad in (('nv12', 4), ('nv21', 0), ('yuv422_yuy2', 0), ('uyvy', 2), ('yuv422', 0)):
        arr = encode_camera(rgb, enc)
        row = arr.shape[1] * (arr.shape[2] if arr.ndim == 3 else 1)
        np.testing.assert_array_equal(image_to_rgb(numpy_to_image(arr, enc, step=row + pad)), want, err_msg=enc)


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_patterns_demosaic_to_the_right_colour(pattern):
    colour = np.array([200, 100, 30], np.uint8)       # distinct R, G, B
    mosaic = encode_camera(np.tile(colour, (8, 10, 1)), f'bayer_{pattern}8')
    out = image_to_rgb(numpy_to_image(mosaic, f'bayer_{pattern}8'))
    assert out.shape == (8, 10, 3)
    # bilinear demosaicing of a uniform mosaic averages equal samples: only integer rounding
    np.testing.assert_allclose(out[2:6, 2:8].reshape(-1, 3), np.tile(colour, (24, 1)), atol=2)


@pytest.mark.parametrize('encoding', ['mono16', '16UC1', '32FC1'])
def test_non_8bit_rejected_for_rgb_models(encoding):
    with pytest.raises(ImageFormatError, match=f"encoding='{encoding}'.*RGB model"):
        image_to_rgb(numpy_to_image(sample(encoding), encoding))


@pytest.mark.parametrize('msg,field', [
    (fake(data=bytes(11)), 'data'),                       # shorter than step*height
    (fake(data=bytes(13)), 'data'),                       # longer than step*height
    (fake(step=5, data=bytes(10)), 'step'),               # step < width*channels
    (fake(height=0, data=b''), 'height'),
    (fake(width=0, data=b''), 'width'),
    (fake(encoding='yuv420'), 'encoding'),
    (fake(encoding='yuv422_yuy2', width=3, step=6, data=bytes(12)), 'width'),       # odd width
    (fake(encoding='nv12', height=3, width=2, step=2, data=bytes(9)), 'height'),    # odd height
    (fake(encoding='nv12', height=2, width=2, step=2, data=bytes(4)), 'data'),      # no UV rows
    (fake(encoding=''), 'encoding'),
    (fake(height=8192, width=8192, step=3 * 8192, data=b''), 'height*width'),
    (fake(encoding='mono16', step=3, data=bytes(6)), 'step'),  # 2 bytes per pixel
])
def test_malformed_messages_name_the_field(msg, field):
    with pytest.raises(ImageFormatError) as e:
        image_to_numpy(msg)
    assert e.value.field == field
    assert str(e.value).startswith(f'{field}=')


def test_encoder_rejects_mismatched_arrays():
    with pytest.raises(ImageFormatError, match='rgb8 needs uint8 with 3'):
        numpy_to_image(np.zeros((4, 4), np.uint8), 'rgb8')
    with pytest.raises(ImageFormatError, match='step=2'):
        numpy_to_image(np.zeros((4, 4), np.uint8), 'mono8', step=2)
    with pytest.raises(ImageFormatError, match='encoding'):
        numpy_to_image(np.zeros((4, 4), np.uint8), 'weird')


def test_compressed_roundtrip_png_exact_jpeg_close(images):
    rgb = np.ascontiguousarray(images['OSBS_029.png'][:120, :160])
    png = rgb_to_compressed(rgb, 'png')
    assert png.format == 'png'
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    jpg = rgb_to_compressed(rgb, 'jpeg', quality=95)
    got = compressed_to_rgb(jpg)
    assert got.shape == rgb.shape
    assert np.abs(got.astype(int) - rgb).mean() < 4.0
    # "rgb8; jpeg compressed bgr8" is what image_transport writes
    jpg.format = 'rgb8; jpeg compressed bgr8'
    np.testing.assert_array_equal(compressed_to_rgb(jpg), got)


def test_compressed_malformed():
    with pytest.raises(ImageFormatError, match='format'):
        compressed_to_rgb(SimpleNamespace(format='tiff', data=b'123'))
    with pytest.raises(ImageFormatError, match='data=.*0 bytes'):
        compressed_to_rgb(SimpleNamespace(format='jpeg', data=b''))
    with pytest.raises(ImageFormatError, match='not decodable'):
        compressed_to_rgb(SimpleNamespace(format='png', data=b'\x89PNG garbage'))
    ok, buf = cv2.imencode('.png', np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ImageFormatError, match='height\\*width'):
        compressed_to_rgb(SimpleNamespace(format='png', data=buf.tobytes()), max_pixels=100)
