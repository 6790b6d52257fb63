-- name: trace_timeline
-- description: Every audit record of one trace, in order: what one request did.
-- controls: PCI DSS 10.2.2; SOC 2 CC7.3; NIST 800-53 AU-3; NIST 800-53 AU-6
-- param: trace_id VARCHAR | W3C trace ID (32 hex digits)
SELECT "timestamp", span_id, service_name, user_id, acting_as, action, resource_type,
       resource_id, success, error_message, client_ip, request_method, request_path, id
FROM audit_trails
WHERE trace_id = $trace_id
ORDER BY "timestamp", id
