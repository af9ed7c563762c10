import pytest

from audiossl_jax.parallel import mesh


def test_resolve_fills_minus_one():
    assert mesh.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    assert mesh.resolve_mesh_shape((2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize(
    "shape, n, message",
    [
        ((3, 1, 1), 8, "needs 3 devices but 8 are available"),
        ((-1, 3, 1), 8, "not divisible"),
        ((-1, -1, 1), 8, "at most one size may be -1"),
        ((0, 1, 1), 8, "sizes must be positive"),
    ],
)
def test_bad_mesh_shapes_name_the_field(shape, n, message):
    with pytest.raises(ValueError, match="config.mesh.shape") as e:
        mesh.resolve_mesh_shape(shape, n)
    assert message in str(e.value)


def test_make_mesh_on_available_devices():
    m = mesh.make_mesh((-1, 1, 1), ("data", "fsdp", "tensor"))
    assert m.axis_names == ("data", "fsdp", "tensor")
    assert m.devices.size >= 1
