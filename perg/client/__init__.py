"""Client for OpenAI-compatible chat servers (TGI Messages API, vLLM, SGLang, llama.cpp).

async with ModelClient(Endpoint("http://127.0.0.1:8080/v1", "my-model")) as client:
    completion = await client.chat([{"role": "user", "content": "Hi"}], max_tokens=16)
"""

from perg.client._client import (
    ClientPool,
    ModelClient,
    TokenNotAllowed,
    check_token_env,
    response_format,
)
from perg.client._transport import (
    AiohttpTransport,
    MockTransport,
    Transport,
    TransportRequest,
    TransportResponse,
)
from perg.client._types import (
    DEFAULT_MAX_IN_FLIGHT,
    Backend,
    ClientTuning,
    Completion,
    Endpoint,
    ModelError,
    Timeouts,
    TransportError,
)

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "AiohttpTransport",
    "Backend",
    "ClientPool",
    "ClientTuning",
    "Completion",
    "Endpoint",
    "MockTransport",
    "ModelClient",
    "ModelError",
    "Timeouts",
    "TokenNotAllowed",
    "Transport",
    "TransportError",
    "TransportRequest",
    "TransportResponse",
    "check_token_env",
    "response_format",
]
