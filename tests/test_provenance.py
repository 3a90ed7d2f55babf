"""Where weights came from is told without the machine's directories."""

from __future__ import annotations

from vitviz.output.provenance import display_location
from vitviz.results import WeightsInfo

from .conftest import ROOT


def test_files_in_the_checkout_are_named_relative_to_it():
    bundled = ROOT / "assets" / "demo" / "vitviz-demo.safetensors"
    shown = display_location(WeightsInfo("bundled", str(bundled)))
    assert shown == "assets/demo/vitviz-demo.safetensors"  # not "/work/…", not the bare name


def test_files_elsewhere_by_name_and_the_hub_by_address(tmp_path):
    outside = tmp_path / "secret-folder" / "mine.safetensors"
    assert display_location(WeightsInfo("file", str(outside))) == "mine.safetensors"
    hub = "https://huggingface.co/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert display_location(WeightsInfo("hub", hub)) == hub
