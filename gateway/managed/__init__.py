"""Engine servers the gateway starts itself (vLLM, SGLang, llama-server, llama-cpp-python, any command): launch
commands, process groups, and the watched server. It knows no API family and no gateway internals, so it is
usable from a plain Python script::

    from gateway.managed import ManagedServer, create_server, list_endpoints
"""

from gateway.managed.engines import ENGINES, EngineError, launch_command, to_flags
from gateway.managed.process import OrphanError
from gateway.managed.server import ManagedServer, ServerError, create_server, list_endpoints

__all__ = ["ENGINES", "EngineError", "ManagedServer", "OrphanError", "ServerError", "create_server",
           "launch_command", "list_endpoints", "to_flags"]
