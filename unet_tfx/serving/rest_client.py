"""TF Serving's REST API for callers without gRPC: the same interface and behaviour as the gRPC
`SegmentationClient` (checks, splitting by size, retries, output discovery), over HTTP with the
standard library only, and without TensorFlow.

    POST {base}/v1/models/NAME[/versions/N | /labels/L]:predict
         {"signature_name": "serving_default", "instances": [{"b64": "<PNG/JPEG>"}, ...]}
         (or the columnar form {"inputs": {"images": [...]}})
    GET  {base}/v1/models/NAME[/versions/N | /labels/L][/metadata]

TF Serving answers with {"predictions": [...]} ({"outputs": ...} for the columnar form): per
image the output's value, or an object of them when the signature has several; outputs named
`*_bytes` come base64-encoded as {"b64": ...}. REST has no output filter: every output of the
signature comes back, the float probabilities as JSON text (~3.5 MB for one 512² image), so
when only masks are wanted the client calls a signature that gives the PNG mask alone (the
export's `serving_mask`) if the model has one.
Errors come as {"error": "..."} with TF Serving's HTTP mapping of the status, mapped back here:
503 and 429 (and refused or dropped connections) are retried like UNAVAILABLE and
RESOURCE_EXHAUSTED; a timeout is DEADLINE_EXCEEDED, not retried.
"""

import base64
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from unet_tfx.serving.client import (
    DEFAULT_SIGNATURE,
    IMAGES,
    MASK_PNG_BYTES,
    PROBABILITIES,
    BaseSegmentationClient,
    ModelMetadata,
    ServingError,
    VersionStatus,
)

# TF Serving's HTTP statuses (http_server.cc, ToHTTPStatusCode) → gRPC status names. 400 also
# stands for FAILED_PRECONDITION and OUT_OF_RANGE, 409 for ABORTED, 500 for INTERNAL and
# DATA_LOSS: none of them is retried, so the first name serves.
HTTP_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
               499: "CANCELLED", 500: "UNKNOWN", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}


class RestSegmentationClient(BaseSegmentationClient):
    """TF Serving's REST API at `base_url` (http://host:8501). `tls_ca`, `tls_cert` and
    `tls_key` (paths) are used for https:// URLs, e.g. through a TLS-terminating proxy;
    `columnar=True` sends the `inputs` form instead of `instances`."""

    def __init__(self, base_url: str, model_name: str = "unet_membrane", *, tls_ca=None,
                 tls_cert=None, tls_key=None, columnar: bool = False, **options):
        super().__init__(model_name, **options)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"{base_url}: expected an http:// or https:// URL")
        if parsed.scheme == "http" and (tls_ca or tls_cert):
            raise ValueError(f"{base_url}: TLS certificates given for a plain http:// URL")
        self.target = base_url.rstrip("/")
        self.columnar = columnar
        self.context = None
        if parsed.scheme == "https":
            self.context = ssl.create_default_context(
                cafile=str(tls_ca) if tls_ca is not None else None)
            if tls_cert is not None:
                self.context.load_cert_chain(str(tls_cert), str(tls_key))

    def _path(self) -> str:
        path = f"{self.target}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version is not None:
            path += f"/versions/{int(self.version)}"
        elif self.label is not None:
            path += f"/labels/{urllib.parse.quote(self.label, safe='')}"
        return path

    def _http(self, url: str, body: dict | None = None) -> tuple[dict, int]:
        """The JSON answer of one GET (or POST of `body`) and its size in bytes; ServingError
        otherwise."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.deadline,
                                        context=self.context) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            code = HTTP_STATUS.get(error.code, "UNKNOWN")
            raw = error.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:500] or error.reason
            raise ServingError(code, f"HTTP {error.code}: {message}") from error
        except TimeoutError as error:  # socket.timeout too
            raise self._timeout(error) from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise self._timeout(error.reason) from error
            if isinstance(error.reason, ssl.SSLError):
                raise _tls_error(error.reason) from error
            raise ServingError("UNAVAILABLE", f"cannot connect: {error.reason}") from error
        except ssl.SSLError as error:  # while reading the answer (TLS 1.3 alerts arrive then)
            raise _tls_error(error) from error
        except (ConnectionError, http.client.HTTPException) as error:
            raise ServingError("UNAVAILABLE", f"connection lost: {error!r}") from error
        try:
            return json.loads(text), len(text)
        except ValueError as error:
            raise ServingError("INTERNAL", f"not JSON: {text[:200]!r}") from error

    def _timeout(self, error) -> ServingError:
        return ServingError("DEADLINE_EXCEEDED",
                            f"no answer within the {self.deadline:g} s deadline ({error})")

    def _signature_for(self, wanted):
        """REST answers every output of a signature: when only the mask is wanted, a signature
        that gives nothing else (the export's `serving_mask`), if the model has one."""
        if PROBABILITIES in wanted or self.signature != DEFAULT_SIGNATURE:  # e.g. serving_tta
            return self.signature
        compact = sorted(name for name, s in self.signatures().items()
                         if list(s["inputs"]) == [IMAGES]
                         and list(s["outputs"]) == [MASK_PNG_BYTES])
        return self.signature if not compact or self.signature in compact else compact[0]

    def request_body(self, images: list[bytes], signature: str | None = None) -> dict:
        encoded = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
        signature = signature or self.signature
        if self.columnar:
            return {"signature_name": signature, "inputs": {IMAGES: encoded}}
        return {"signature_name": signature, "instances": encoded}

    def _predict(self, images, outputs, signature):
        answer, size = self._http(f"{self._path()}:predict", self.request_body(images, signature))
        self.stats["response_bytes"] += size
        names = tuple(sorted(self.signatures()[signature]["outputs"]))
        if self.columnar:
            columns = answer.get("outputs")
            columns = columns if len(names) > 1 else {names[0]: columns}
        else:
            rows = answer.get("predictions")
            if not isinstance(rows, list) or len(rows) != len(images):
                raise ServingError("INTERNAL", f"expected {len(images)} predictions; got "
                                   f"{type(rows).__name__} {str(rows)[:200]}")
            columns = {name: [row[name] if len(names) > 1 else row for row in rows]
                       for name in names}
        result = {}
        for name in outputs:
            values = columns.get(name) if isinstance(columns, dict) else None
            if values is None:
                raise ServingError("INTERNAL", f"the answer has no output {name!r}")
            if name == MASK_PNG_BYTES:
                result[name] = [base64.b64decode(value["b64"]) for value in values]
            else:
                result[name] = np.asarray(values, dtype=np.float32)
        return result

    def _metadata(self):
        answer, _ = self._http(f"{self._path()}/metadata")
        definitions = answer.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        signatures = {
            name: {kind: {k: v.get("dtype", "") for k, v in definition.get(kind, {}).items()}
                   for kind in ("inputs", "outputs")}
            for name, definition in definitions.items()}
        return ModelMetadata(int(answer.get("model_spec", {}).get("version", 0) or 0),
                             signatures)

    def _status(self):
        answer, _ = self._http(self._path())
        return [VersionStatus(int(s.get("version", 0)), s.get("state", ""),
                              s.get("status", {}).get("error_code", "OK"),
                              s.get("status", {}).get("error_message", ""))
                for s in answer.get("model_version_status", [])]


def _tls_error(error: ssl.SSLError) -> ServingError:
    """A TLS failure: a connection cut during the handshake is UNAVAILABLE (retried, as gRPC
    does); a certificate refused by either side is UNAUTHENTICATED, which retrying cannot fix."""
    code = "UNAVAILABLE" if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError) \
        else "UNAUTHENTICATED"
    return ServingError(code, f"TLS: {error}")
