-- name: audit_trail_reads
-- description: Who queried the audit trail itself, what and when (reads recorded as audit.read).
-- controls: PCI DSS 10.2.1.3; SOC 2 CC7.2; NIST 800-53 AU-9
SELECT "timestamp", user_id, resource_id AS target,
       json_extract_string(context, '$.report') AS report,
       json_extract_string(context, '$.query') AS query, id
FROM audit_trails
WHERE action = 'audit.read'
ORDER BY "timestamp", id
