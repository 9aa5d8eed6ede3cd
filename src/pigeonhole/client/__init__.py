"""Python client for the Pigeonhole REST API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from pigeonhole.client import Client
    with Client("http://127.0.0.1:8000", token="pgh_…") as pgh:
        dataset = pgh.create_dataset("birds")
        pgh.upload_folder(dataset["id"], "./photos")      # photos/<class>/<images>
        model = pgh.create_model("birds", dataset["id"])
        pgh.wait_for_job(model["job_id"])
        print(pgh.predict(model["id"], ["robin.jpg"]))
"""

from pigeonhole.client.calls import UploadProgress
from pigeonhole.client.clients import AsyncClient, Client
from pigeonhole.client.errors import (
    AuthenticationError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PigeonholeAPIError,
    RateLimited,
    ServerError,
    ValidationFailed,
)

__all__ = [
    "AsyncClient", "AuthenticationError", "BadRequest", "Client", "Conflict", "ConnectionFailed", "NotFound",
    "PayloadTooLarge", "PermissionDenied", "PigeonholeAPIError", "RateLimited", "ServerError", "UploadProgress",
    "ValidationFailed",
]
