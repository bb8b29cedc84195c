"""Envoy's access log as JSON lines: which instance served a request, with what status, how fast.

Beside it, a stats access logger turns each finished request into metrics Envoy has no built-in stat
for: time to the first body byte (for a token stream: the first token), the whole duration (for a
stream: how long it lasted), and a counter per gRPC status.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stats.v3 import stats_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from agent.config import AccessLog
from agent.envoy.serialize import pack

FILE_LOGGER = "envoy.access_loggers.file"
STATS_LOGGER = "envoy.access_loggers.stats"
# Prometheus: envoy_modelarts_first_byte_ms_bucket{service=...}, envoy_modelarts_duration_ms_bucket,
# envoy_modelarts_grpc_responses{service=..., grpc_status="14"}.
STATS_PREFIX = "modelarts"
# From the start of the request to the first byte of the upstream response body: with headers sent
# first (SSE, gRPC), this is the time to first token, which %RESPONSE_DURATION% (headers) is not.
FIRST_BODY_BYTE = "%COMMON_DURATION(DS_RX_BEG:US_RX_BODY_BEG:ms)%"

HTTP_FIELDS = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "first_byte_ms": FIRST_BODY_BYTE,
    "grpc_status": "%GRPC_STATUS_NUMBER%",
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


def stream_stats_logs(service: str) -> list[accesslog_pb2.AccessLog]:
    """Histograms of first-body-byte time and duration per service, and gRPC statuses (gRPC requests only).

    `service` may be a format string: the gateway passes %ROUTE_NAME% (its routes are named after services).
    """
    tags = [stats_pb2.Config.Tag(name="service", value_format=service)]
    ms = stats_pb2.Config.Histogram.Unit.Milliseconds
    timings = stats_pb2.Config(stat_prefix=STATS_PREFIX, histograms=[
        stats_pb2.Config.Histogram(stat=stats_pb2.Config.Stat(name="first_byte_ms", tags=tags), unit=ms,
                                   value_format=FIRST_BODY_BYTE),
        stats_pb2.Config.Histogram(stat=stats_pb2.Config.Stat(name="duration_ms", tags=tags), unit=ms,
                                   value_format="%DURATION%"),
    ])
    status_tags = [*tags, stats_pb2.Config.Tag(name="grpc_status", value_format="%GRPC_STATUS_NUMBER%")]
    statuses = stats_pb2.Config(stat_prefix=STATS_PREFIX, counters=[stats_pb2.Config.Counter(
        stat=stats_pb2.Config.Stat(name="grpc_responses", tags=status_tags),
        value_fixed=wrappers_pb2.UInt64Value(value=1))])
    is_grpc = accesslog_pb2.AccessLogFilter(header_filter=accesslog_pb2.HeaderFilter(
        header=route_components_pb2.HeaderMatcher(name="content-type", string_match=string_pb2.StringMatcher(
            prefix="application/grpc"))))
    return [accesslog_pb2.AccessLog(name=STATS_LOGGER, typed_config=pack(timings)),
            accesslog_pb2.AccessLog(name=STATS_LOGGER, typed_config=pack(statuses), filter=is_grpc)]


# Per-host counters for the adaptive loop (agent/adaptive/envoy_admin.py reads them from /stats):
# `modelarts.adaptive_answers.body.0.cluster.<c>.instance.<host>` and `modelarts.adaptive_ttfb_us.cluster.<c>
# .instance.<host>`, the count of 2xx answers with a body and the sum of their times to the first body byte in
# microseconds. Envoy keeps no per-host latency; with these the loop has every request's exact time, readable
# at any moment (counters, not histograms, which only move at the stats flush). Time to first byte is the
# speed of a stream too (its length is the client's choice, issue 16). Only answers with a body: a HEAD, a
# trailers-only gRPC error or a stream the client left before its first token has no first byte, and counting
# it would make the host look faster.
#
# Which answers count is decided without a CEL filter: issue 18's locked run (15:14 UTC, b9f94f0) put the CEL
# filter at ~1.6 µs of Envoy CPU per request, half the loop's whole per-request cost. Envoy's built-in status
# filters keep the 2xx ones (next to free), and the `body` tag tells those with a body from the others: it is
# the time from the first body byte to itself, "0" exactly when there was one (empty otherwise), so the count
# is taken over the same answers as the time sum (whose counter Envoy skips when there is no first byte). The
# reader keeps `body.0` only.
FIRST_BODY_BYTE_US = "%COMMON_DURATION(DS_RX_BEG:US_RX_BODY_BEG:us)%"
HAS_BODY = "%COMMON_DURATION(US_RX_BODY_BEG:US_RX_BODY_BEG:ms)%"
BODY_TAG = "body"
# Runtime keys of the status bounds (Envoy requires one; nothing sets them, so the defaults hold).
TIMED_STATUS_RUNTIME = "modelarts.adaptive_timing.status_"


def _status(op: accesslog_pb2.ComparisonFilter.Op.ValueType, value: int) -> accesslog_pb2.AccessLogFilter:
    name = accesslog_pb2.ComparisonFilter.Op.Name(op).lower()
    return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(op=op, value=base_pb2.RuntimeUInt32(
            default_value=value, runtime_key=f"{TIMED_STATUS_RUNTIME}{name}"))))


def adaptive_timing_logs() -> list[accesslog_pb2.AccessLog]:
    tags = [stats_pb2.Config.Tag(name="cluster", value_format="%UPSTREAM_CLUSTER%"),
            stats_pb2.Config.Tag(name="instance", value_format="%UPSTREAM_HOST%")]
    counters = stats_pb2.Config(stat_prefix=STATS_PREFIX, counters=[
        stats_pb2.Config.Counter(
            stat=stats_pb2.Config.Stat(name="adaptive_answers",
                                       tags=[stats_pb2.Config.Tag(name=BODY_TAG, value_format=HAS_BODY), *tags]),
            value_fixed=wrappers_pb2.UInt64Value(value=1)),
        stats_pb2.Config.Counter(stat=stats_pb2.Config.Stat(name="adaptive_ttfb_us", tags=tags),
                                 value_format=FIRST_BODY_BYTE_US),
    ])
    two_xx = accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[
        _status(accesslog_pb2.ComparisonFilter.GE, 200), _status(accesslog_pb2.ComparisonFilter.LE, 299)]))
    return [accesslog_pb2.AccessLog(name=STATS_LOGGER, typed_config=pack(counters), filter=two_xx)]
