"""The server's options as models, without starting a server: what a request and a server may
be told, and that the client asks only what the server accepts."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
from pydantic import ValidationError

from vitviz import wire
from vitviz.backends import remote
from vitviz.backends.remote import explain_query
from vitviz.server.options import AppArgs, ExplainOptions, Settings, choices, refusal
from vitviz.server.service import ApiError, explain_options


def _refused(query: dict) -> tuple[int, str]:
    with pytest.raises(ValidationError) as err:
        ExplainOptions.model_validate(query)
    return refusal(err.value.errors())


def test_a_query_string_becomes_options_by_its_names():
    query = {"class": ["top", "3"], "layer": ["-1", "2"], "seen": "true", "top_k": "7"}
    options = ExplainOptions.model_validate(query)
    assert options.classes == ["top", "3"] and options.layers == [-1, 2]
    assert options.seen is True and options.top_k == 7
    assert (options.attention, options.dtype, options.gradients) == (
        "readout",
        "float16",
        "relevance",
    )
    assert ExplainOptions(classes=["1"]).classes == ["1"]  # field names work in code


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"attention": "some"}, 400, "attention must be none, readout or full"),
        ({"dtype": "int4"}, 400, "dtype must be float16, uint8 or float32"),
        ({"gradients": "some"}, 400, "gradients must be relevance or full"),
        ({"top_k": "many"}, 422, "invalid options: top_k: Input should be a valid integer"),
        ({"layer": ["x"]}, 422, "invalid options: layer.0: Input should be a valid integer"),
        # a wrong type is reported before a wrong choice, as FastAPI did before the engine ran
        ({"top_k": "many", "attention": "some"}, 422, "invalid options: top_k:"),
    ],
)
def test_wrong_types_get_422_and_wrong_choices_400(query, status, message):
    got_status, got = _refused(query)
    assert got_status == status and got.startswith(message), got
    assert status == 400 or "attention" not in got


def test_a_new_option_is_one_declared_field():
    """An option added to the explain endpoint is one field: parsed from the query by its
    alias, its choices and its refusal come from the declaration (no list elsewhere)."""
    from typing import Literal

    from pydantic import Field

    class WithToy(ExplainOptions):
        toy_mode: Literal["plain", "fancy"] = Field("plain", alias="toy")

    assert WithToy.model_validate({"toy": "fancy"}).toy_mode == "fancy"
    assert WithToy.model_validate({}).toy_mode == "plain"
    assert choices(WithToy, "toy_mode") == ("plain", "fancy")
    with pytest.raises(ValidationError) as err:
        WithToy.model_validate({"toy": "weird"})
    assert refusal(err.value.errors(), WithToy) == (400, "toy must be plain or fancy")


def test_fastapi_locations_are_read_like_pydantics():
    errors = [{"type": "int_parsing", "loc": ("query", "top_k"), "msg": "bad"}]
    assert refusal(errors) == (422, "invalid options: top_k: bad")
    choice = [{"type": "literal_error", "loc": ("query", "dtype"), "msg": "no"}]
    assert refusal(choice)[0] == 400
    with pytest.raises(ApiError) as err:
        explain_options(attention="all")
    assert (err.value.status, err.value.code) == (400, "bad_option")


def test_the_client_asks_only_what_the_server_accepts():
    """Every query ``RemoteBackend`` can send validates as the server's options, each value
    as meant; the client's dtypes are among the server's."""
    assert set(remote._ENCODINGS) == set(get_args(remote.Precision))
    assert set(get_args(remote.Precision)) <= set(choices(ExplainOptions, "dtype"))
    names = {f.alias or n for n, f in ExplainOptions.model_fields.items()}
    for attention, dtype, gradients, negative, classes, layers in itertools.product(
        get_args(wire.Attention),
        get_args(wire.ArrayDtype),
        get_args(wire.Gradients),
        (False, True),
        ((), (None, 3)),
        (None, [-1, 0]),
    ):
        query = explain_query(
            top_k=3,
            attention=attention,
            dtype=dtype,
            classes=classes,
            layers=layers,
            gradients=gradients,
            negative=negative,
        )
        assert set(query) <= names
        options = ExplainOptions.model_validate(query)
        assert (options.attention, options.dtype, options.gradients) == (
            attention,
            dtype,
            gradients,
        )
        assert options.top_k == 3 and options.seen is True and options.negative is negative
        assert options.classes == ["top" if c is None else str(c) for c in classes]
        assert options.layers == (layers or [])


def test_settings_come_from_strings_without_parsing_annotations():
    app = AppArgs.parse(
        {"model": "demo", "max_batch_size": "8", "require_token": "true", "replicas": "2"}
    )
    assert app.max_batch_size == 8 and app.require_token is True and app.replicas == 2
    assert AppArgs.parse({"replicas": "auto"}).replicas == "auto"
    settings = app.settings()
    assert type(settings) is Settings and settings.model == "demo"
    assert "replicas" not in settings.model_dump()
    assert Settings.model_validate(settings.model_dump()) == settings  # what a replica gets
    with pytest.raises(ValueError, match="unknown server options: colour"):
        AppArgs.parse({"colour": "red"})
    with pytest.raises(ValidationError, match="max_batch_size"):
        AppArgs.parse({"max_batch_size": "many"})
    assert Settings(labels="cat, dog").labels == "cat, dog"  # split by the engine
    assert Settings(labels=["cat", "dog"]).labels == ["cat", "dog"]
