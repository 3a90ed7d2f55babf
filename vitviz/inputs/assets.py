"""Where the files vitviz ships live: the sample photos, the demo scenes and model, the class-name
tables. Defined here once; everything else imports :data:`ASSETS`."""

from __future__ import annotations

from pathlib import Path

ASSETS: Path = Path(__file__).resolve().parents[2] / "assets"
"""The ``assets/`` folder at the root of the repository (sample photos, demo model, tables)."""
