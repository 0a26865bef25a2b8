"""The ONNX external-data check reads protobuf as protobuf: any field order, repeated fields, tensors at any depth
(initializers, sparse initializers, attribute tensors, subgraphs, functions), and a malformed file is one error."""

import pytest

from edgeq.errors import UsageError
from edgeq.onnxcheck import external_locations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def entry(key: str, value: str, value_first: bool = False) -> bytes:
    k, v = field(1, key.encode()), field(2, value.encode())
    return v + k if value_first else k + v


def tensor(location: str, value_first: bool = False, extra: bytes = b"") -> bytes:
    # name (8), data_location EXTERNAL (14 = 1), the entries (13); field order shuffled by the caller's choice
    return extra + field(13, entry("location", location, value_first)) + varint_field(14, 1) + field(8, b"w")


def model(graph: bytes) -> bytes:
    return varint_field(1, 9) + field(7, graph)  # ir_version, graph


def _write(tmp_path, data: bytes):
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("value_first", [False, True])
def test_location_is_found_whichever_field_comes_first(tmp_path, value_first):
    path = _write(tmp_path, model(field(5, tensor("../secret.bin", value_first))))
    assert external_locations(path) == ["../secret.bin"]


def test_locations_in_subgraphs_sparse_tensors_attributes_and_functions(tmp_path):
    sub = field(5, tensor("/etc/a"))  # a subgraph's initializer
    attribute = field(6, sub) + field(5, tensor("/etc/b")) + field(10, tensor("/etc/c"))  # g, t, tensors
    node = field(5, attribute)
    sparse = field(1, tensor("/etc/d")) + field(2, tensor("/etc/e"))
    graph = field(1, node) + field(15, sparse)
    function = field(7, field(5, field(5, tensor("/etc/f"))))  # function → node → attribute → t
    path = _write(tmp_path, model(graph) + field(25, function))
    assert sorted(external_locations(path)) == [f"/etc/{c}" for c in "abcdef"]


def test_every_value_of_an_entry_with_a_repeated_field_counts(tmp_path):
    twice = field(1, b"location") + field(2, b"inside.bin") + field(2, b"../outside.bin")
    path = _write(tmp_path, model(field(5, field(13, twice))))
    assert external_locations(path) == ["inside.bin", "../outside.bin"]


def test_other_keys_are_not_locations(tmp_path):
    path = _write(tmp_path, model(field(5, field(13, entry("offset", "../not-a-path")) + tensor("data.bin"))))
    assert external_locations(path) == ["data.bin"]


@pytest.mark.parametrize(
    "data, said",
    [
        (b"\x3a\xff\xff\xff\xff\x0f", "runs past its message"),  # field 7, a length past the end
        (b"\x3a\x80", "truncated or overlong varint"),
        (b"\x3b\x00", "wire type 3"),
        (b"\x02\x00", "field number 0"),
        (b"", "an empty .onnx file"),
    ],
)
def test_malformed_protobuf_is_one_error(tmp_path, data, said):
    with pytest.raises(UsageError, match=said):
        external_locations(_write(tmp_path, data))


def test_nesting_is_bounded(tmp_path):
    graph = field(5, tensor("x"))
    for _ in range(40):  # graph → node → attribute → graph … 120 messages deep
        graph = field(1, field(5, field(6, graph)))
    with pytest.raises(UsageError, match="nested more than"):
        external_locations(_write(tmp_path, model(graph)))


def test_agrees_with_the_onnx_package_on_a_real_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    b = numpy_helper.from_array(np.ones((4,), np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 4])],
        [w, b],
    )
    m = helper.make_model(graph)
    onnx.save_model(
        m, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0
    )
    expected = [
        e.value
        for t in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    ]
    assert sorted(external_locations(tmp_path / "m.onnx")) == sorted(expected) and len(expected) == 2
