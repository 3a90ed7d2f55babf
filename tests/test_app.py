"""The first app page: it shows the engine's results, and errors as messages, never tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import tiny
from vitviz.backend import LocalBackend

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts without models cached by an earlier one."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def test_offline_hub_model_shows_a_clear_error():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.sidebar.selectbox[0].select("vit-b16").run()
    assert not at.exception
    assert len(at.error) == 1
    msg = at.error[0].value
    assert "vit_base_patch16_224" in msg and "Connect to the internet" in msg


@pytest.fixture
def tiny_backend(monkeypatch):
    loaded = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 2})
    monkeypatch.setattr(LocalBackend, "from_name", classmethod(lambda cls, key: cls(loaded)))


def test_sample_image_gives_predictions_and_overlay(tiny_backend):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error
    assert len(at.get("progress")) == 5  # top-5 predictions
    assert len(at.get("image")) == 2  # the seen image and the overlay
