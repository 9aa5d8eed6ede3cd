"""The base of the typed job contracts: what a job kind's producer and consumer agree on, checked by pydantic.

Each job kind describes what crosses a process boundary (API -> job row -> dispatcher ``prepare`` -> Ray
worker ``run`` -> events -> dispatcher ``on_event`` / ``on_success``) with one model per message, kept in its
domain (``models/job_contracts.py``, ``datasets/import_contract.py``). The wire format stays plain JSON, so
the builder dumps the model and the handler parses it once at the top of each hook.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class JobContract(BaseModel):
    """A message of a job kind. Unknown keys are ignored, so a message written by older or newer code parses.

    ``omitted_when_none`` names the keys that today's messages carry only when they have a value (the blob
    keys of files a version may lack, a note): they are left out of the dump when None, so what is stored
    on a job row or in its events keeps the JSON shape that readers (the API, the web app) know.
    """

    # ``model_id`` is a field of many contracts, not pydantic's namespace.
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    omitted_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omitted_when_none:
            if key in data and data[key] is None:
                del data[key]
        return data
