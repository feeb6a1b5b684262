"""Shared test setup.

Tests run offline: FaceDet uses its ``cascade`` backend (shipped with
scikit-image) in the process-wide runtime, and the Hugging Face hub is never
contacted.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _offline_face_detector() -> None:
    from visprog.running.runtime import default_runtime

    default_runtime().set_option("FaceDet", "backend", "cascade")
