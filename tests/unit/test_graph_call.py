import threading

import numpy as np
import pytest

from maas.config import ModelConfig
from maas.data import DataSchema
from maas.graph_call import GraphCall
from maas.models import build_model

IMAGE = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="test-images")
TEXT = DataSchema(input_shape=(), classes=["neg", "pos"], dtype="string", source="test-text")
TEXTS = np.array(["the film was good", "the film was not good", "awful service", "great food"] * 5)


def _image_model(kind: str = "mlp"):
    cfg = ModelConfig(type=kind, hidden_units=[16], conv_filters=[4])
    return build_model(cfg, IMAGE, np.full((8, 8), 2.0), np.full((8, 8), 4.0))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_direct_call_answers_exactly_what_the_model_does(kind: str) -> None:
    model = _image_model(kind)
    call = GraphCall(model, IMAGE.input_shape)
    assert call.direct  # this TensorFlow's internals are the ones the direct call needs
    for rows in (1, 7, 64):
        batch = np.random.default_rng(rows).random((rows, 8, 8), dtype=np.float32) * 16
        expected = call.function(batch).numpy()
        got = call(batch)
        assert got.dtype == expected.dtype and got.shape == (rows, 10)
        np.testing.assert_array_equal(got, expected)  # same graph, same kernels: bit for bit
        np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), rtol=1e-5, atol=1e-6)


def test_a_text_model_is_called_directly_on_strings() -> None:
    cfg = ModelConfig(type="text", text_encoder="conv", vocab_size=50, sequence_length=8,
                      embedding_dim=4, conv_filters=[4], hidden_units=[4])
    model = build_model(cfg, TEXT, None, None, TEXTS)
    call = GraphCall(model, TEXT.input_shape, string_input=True)
    batch = np.array(["good film", "unknown words here", ""], dtype=object)
    assert call.direct
    np.testing.assert_array_equal(call(batch), call.function(batch).numpy())


def test_a_batch_of_the_wrong_shape_is_refused_by_the_signature_not_run() -> None:
    call = GraphCall(_image_model(), IMAGE.input_shape)
    with pytest.raises((ValueError, TypeError)):
        call(np.zeros((2, 64), dtype=np.float32))


def test_calls_from_several_threads_each_get_their_own_answer() -> None:
    """The batcher calls the model from worker threads."""
    call = GraphCall(_image_model(), IMAGE.input_shape)
    batches = [np.full((3, 8, 8), value, dtype=np.float32) for value in range(8)]
    expected = [call.function(batch).numpy() for batch in batches]
    got: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        for _ in range(20):
            got[index] = call(batches[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, answer in enumerate(expected):
        np.testing.assert_array_equal(got[index], answer)


def test_where_tensorflow_internals_differ_the_tf_function_is_called(monkeypatch) -> None:
    from tensorflow.python.eager.polymorphic_function.concrete_function import ConcreteFunction

    model = _image_model()
    with monkeypatch.context() as patch:  # as if a TF release had renamed what the direct call reads
        patch.delattr(ConcreteFunction, "captured_inputs")
        call = GraphCall(model, IMAGE.input_shape)
    assert not call.direct
    batch = np.ones((4, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(call(batch), np.asarray(model(batch, training=False)), rtol=1e-5, atol=1e-6)
