from tests.llm_server import _clean_llm_env, llm_server

__all__ = ["_clean_llm_env", "llm_server"]
