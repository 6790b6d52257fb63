-- name: resource_history
-- description: Every change of one resource in order, with old -> new values and who made it.
-- controls: PCI DSS 10.2.2; SOC 2 CC8.1; HIPAA 164.312(b); NIST 800-53 AU-3
-- param: resource_type VARCHAR | Resource type, e.g. tool
-- param: resource_id VARCHAR | Resource ID, e.g. tool-7
SELECT "timestamp", action, user_id, acting_as, success, old_values, new_values, changes,
       error_message, trace_id, id
FROM audit_trails
WHERE resource_type = $resource_type
  AND resource_id = $resource_id
  AND (old_values IS NOT NULL OR new_values IS NOT NULL OR changes IS NOT NULL
       OR upper(action) IN ('CREATE', 'UPDATE', 'DELETE'))
ORDER BY "timestamp", id
