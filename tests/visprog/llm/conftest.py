from pathlib import Path

import pytest

from tests.llm_server import llm_server
from tests.servers import clean_llm_env

__all__ = ["llm_server"]


@pytest.fixture(autouse=True)
def no_llm_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OpenAI settings or proxies leak in from the environment; the plan cache lives in ``tmp_path``."""
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")
