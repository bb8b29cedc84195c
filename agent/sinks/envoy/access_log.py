"""Envoy's access log as JSON lines: which instance served a request, with what status, how fast."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from google.protobuf import struct_pb2

from agent.config import AccessLog
from agent.sinks.envoy.serialize import pack

FILE_LOGGER = "envoy.access_loggers.file"

HTTP_FIELDS = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "instance": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}
TCP_FIELDS = {
    "time": "%START_TIME%",
    "duration_ms": "%DURATION%",
    "instance": "%UPSTREAM_HOST%",
    "flags": "%RESPONSE_FLAGS%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
}


def access_logs(service: str, config: AccessLog, tcp: bool = False) -> list[accesslog_pb2.AccessLog]:
    if not config.enabled:
        return []
    fields = struct_pb2.Struct()
    fields.update({"service": service, **(TCP_FIELDS if tcp else HTTP_FIELDS)})
    logger = file_pb2.FileAccessLog(
        path=config.path,
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fields),
    )
    return [accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(logger))]
