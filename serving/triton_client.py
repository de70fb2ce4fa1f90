"""One Triton client interface over tritonclient's HTTP and gRPC modules, for the client and the load test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from helpers.cli import RunnerError

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class Reply:
    """One response: its outputs (name -> array) or the server's error message."""

    outputs: dict[str, np.ndarray]
    error: str | None = None
    request_id: str = ""


class TritonClient:
    """A blocking client of one server; not shared between threads (make one per thread)."""

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 120.0):
        if protocol not in PROTOCOLS:
            raise RunnerError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if "://" in url:
            raise RunnerError(f"--url takes HOST:PORT without a scheme, got {url!r}")
        self.protocol = protocol
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        self._module = module
        self._timeout_s = timeout_s
        self.error_type = InferenceServerException
        self._datatype = np_to_triton_dtype

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except self.error_type:
            return False
        except OSError:
            return False

    def model_config(self, model: str) -> dict[str, Any]:
        """The model's configuration as a JSON-like dict (same keys for both protocols)."""
        if self.protocol == "http":
            return self._client.get_model_config(model)
        from google.protobuf.json_format import MessageToDict

        config = self._client.get_model_config(model, as_json=False).config
        return MessageToDict(config, preserving_proto_field_name=True)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], request_id: str = "") -> Reply:
        """Send one request; a server-side error comes back in ``Reply.error``, not raised."""
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else self._datatype(array.dtype)
            tensor = self._module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(model, tensors, outputs=requested, request_id=request_id, client_timeout=self._timeout_s)
            else:
                result = self._client.infer(model, tensors, outputs=requested, request_id=request_id)
        except self.error_type as err:
            return Reply({}, error=err.message() or str(err), request_id=request_id)
        response = result.get_response()
        returned_id = response.get("id", "") if isinstance(response, dict) else response.id
        return Reply({name: result.as_numpy(name) for name in outputs}, request_id=returned_id)

    def close(self) -> None:
        self._client.close()

