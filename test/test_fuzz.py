"""Property-based fuzzing (issue 5): Image -> numpy conversion and the Pipeline entry.

Whatever the input, the result is either a valid output or the package's documented error type
(InputError and its subclass ImageConversionError), never another exception. Examples are
derandomized and bounded so the run is deterministic and takes a few seconds.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cgrp_ros.core.errors import InputError
from cgrp_ros.ros.image_conversions import ENCODINGS, RAW_CAMERA, ImageConversionError, image_to_numpy, to_bgr

try:
    from sensor_msgs.msg import Image  # the message class the node really receives
except ImportError:
    from test_conversions import FakeImage as Image

BOUNDED = settings(derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])
ENCODING_NAMES = sorted(ENCODINGS) + ["nv12", "bgr32", "MONO8", ""]


@st.composite
def image_messages(draw):
    """Messages whose fields are mostly consistent, with steps, lengths and byte orders pushed around."""
    encoding = draw(st.sampled_from(ENCODING_NAMES))
    height, width = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    pixel_bytes = np.dtype(ENCODINGS[encoding][0]).itemsize * ENCODINGS[encoding][1] if encoding in ENCODINGS else 3
    step = max(0, width * pixel_bytes + draw(st.integers(-4, 7)))   # too small, exact, padded, odd
    length = max(0, step * height + draw(st.sampled_from([0, 0, 0, -1, -step, 5])))  # truncated or longer
    data = draw(st.binary(min_size=length, max_size=length))
    return Image(encoding=encoding, height=height, width=width, step=step,
                 is_bigendian=draw(st.booleans()), data=data)


def expected_pixels(msg) -> np.ndarray:
    """The reference decoding: each row's bytes read with the message's byte order."""
    dtype, channels = ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * dtype.itemsize * channels
    data = bytes(msg.data)
    rows = [np.frombuffer(data[r * msg.step:r * msg.step + row_bytes], dtype) for r in range(msg.height)]
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return np.stack(rows).reshape(shape)


@settings(BOUNDED, max_examples=300)
@given(image_messages())
def test_image_to_numpy_returns_the_pixels_or_a_conversion_error(msg):
    try:
        image = image_to_numpy(msg)
    except ImageConversionError as exc:
        assert isinstance(exc, InputError) and exc.kind in {"encoding", "size", "step", "data"}
        return
    expected = expected_pixels(msg)
    assert image.shape == expected.shape and image.dtype.isnative
    np.testing.assert_array_equal(image, expected)  # NaN == NaN here
    bgr = to_bgr(image, msg.encoding)
    if msg.encoding in RAW_CAMERA:  # demosaiced / converted: colour of the mosaic's depth
        assert bgr.shape == image.shape[:2] + (3,) and bgr.dtype == image.dtype
    else:
        assert bgr.shape == image.shape


DTYPES = [np.uint8, np.uint16, np.float32, np.float64, np.int8, np.int32, np.float16, np.bool_]


@st.composite
def arrays(draw):
    """Any small array: shape (incl. 0, 1 and odd channel counts), dtype, values (NaN, inf, constant)."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = [draw(st.integers(0, 12)), draw(st.integers(0, 12))]
    ndim = draw(st.sampled_from([1, 2, 2, 3, 3, 4]))
    if ndim == 1:
        shape = shape[:1]
    elif ndim >= 3:
        shape.append(draw(st.sampled_from([1, 2, 3, 4, 5])))
    if ndim == 4:
        shape.append(1)
    kind = draw(st.sampled_from(["random", "constant", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype.kind == "f":
        values = rng.normal(0, 1000, shape)
        if kind == "special":  # NaN / inf sprinkled, sometimes everywhere
            mask = rng.random(shape) < draw(st.sampled_from([0.1, 1.0]))
            values[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
    else:
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        values = rng.integers(info.min, info.max, shape, endpoint=True) if info else rng.random(shape) < 0.5
    if kind == "constant":
        values = np.full(shape, values.flat[0] if values.size else 0)
    with np.errstate(invalid="ignore", over="ignore"):
        image = np.asarray(values).astype(dtype)
    if draw(st.booleans()) and image.ndim >= 2 and image.shape[1] > 1:
        image = image[:, ::-1]  # a non-contiguous view
    return image


@pytest.fixture(scope="session")
def small_pipeline():
    """The shipped weights at the smallest working size: fuzzing tests the entry, not the networks."""
    from cgrp_ros.core.pipeline import Pipeline, PipelineConfig

    return Pipeline(PipelineConfig(backend="torch", device="cpu", working_size=(32, 32)))


@settings(BOUNDED, max_examples=60)
@given(visible=arrays(), thermal=arrays())
@example(visible=np.zeros((9, 9, 3), np.uint8), thermal=np.random.default_rng(0).random((9, 9, 3)))  # found a cv2.error
@example(visible=[[1, 2], [3, 4]], thermal=None)
def test_pipeline_returns_valid_outputs_or_an_input_error(small_pipeline, visible, thermal):
    try:
        result = small_pipeline(visible, thermal)
    except InputError:
        return
    assert_valid_outputs(result, visible)


def assert_valid_outputs(result, visible):
    height, width = visible.shape[:2]
    assert result.fused.shape == (height, width) and result.fused.dtype == np.uint8
    assert result.flow.shape == (height, width, 2) and result.flow.dtype == np.float32
    assert np.isfinite(result.flow).all()
    assert result.pseudo_thermal.shape == (height, width) and result.pseudo_thermal.dtype == np.uint8
    assert result.registered_thermal.shape == (height, width)
    colour = visible.ndim == 3 and visible.shape[2] in (3, 4)
    assert (result.fused_color is not None) == colour
    if colour:
        assert result.fused_color.shape == (height, width, 3) and result.fused_color.dtype == np.uint8


@st.composite
def valid_arrays(draw, channels, unit_floats=False):
    """An image the Pipeline takes by its shape and dtype: H x W or H x W x C (C from `channels`), sides
    2..40, uint8, uint16, float32 or float64; values random, constant, or with NaN / inf (sometimes
    everywhere). Floats around 300 (a thermal in kelvin), or with `unit_floats` in 0..1.2 (a visible
    image in [0, 1], a little beyond it clipped: one on another scale is refused, test_pipeline)."""
    shape = [draw(st.integers(2, 40)), draw(st.integers(2, 40))]
    c = draw(st.sampled_from(channels))
    if c:
        shape.append(c)
    dtype = np.dtype(draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64])))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["random", "random", "constant", "special"]))
    if dtype.kind == "f":
        values = rng.uniform(0.0, 1.2, shape) if unit_floats else rng.normal(300, 50, shape)
        if kind == "special":
            mask = rng.random(shape) < draw(st.sampled_from([0.1, 1.0]))
            values[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
    else:
        values = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True)
    if kind == "constant":
        values = np.full(shape, values.flat[0])
    return np.asarray(values).astype(dtype)


@settings(BOUNDED, max_examples=40)
@given(visible=valid_arrays((0, 3, 4), unit_floats=True), thermal=valid_arrays((0, 1)))
def test_pipeline_fuses_every_image_of_a_valid_shape_and_dtype(small_pipeline, visible, thermal):
    """Unlike the test above, whose inputs are mostly refused, these all reach the networks: the only
    refusal left is a thermal with no finite pixel."""
    try:
        result = small_pipeline(visible, thermal)
    except InputError as error:
        assert "no finite pixel" in str(error) and not np.isfinite(thermal).any(), error
        return
    assert_valid_outputs(result, visible)
