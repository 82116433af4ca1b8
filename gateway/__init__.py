"""llm-gateway: one server for every popular LLM API over llama.cpp."""

__version__ = "0.1.0"
