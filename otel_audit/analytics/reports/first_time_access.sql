-- name: first_time_access
-- description: A user's first touch of a resource class (resource type), optionally only first touches since a date.
-- controls: SOC 2 CC6.1; SOC 2 CC7.2; NIST 800-53 AU-6; NIST 800-53 AC-6
-- param: since TIMESTAMPTZ = NULL | Only first touches at or after this time
SELECT user_id, resource_type, first_at, action, resource_id, trace_id
FROM (
    SELECT user_id, resource_type, "timestamp" AS first_at, action, resource_id, trace_id,
           row_number() OVER (PARTITION BY user_id, resource_type ORDER BY "timestamp", id) AS n
    FROM audit_trails
    WHERE resource_type IS NOT NULL
)
WHERE n = 1
  AND ($since::TIMESTAMPTZ IS NULL OR first_at >= $since::TIMESTAMPTZ)
ORDER BY first_at, user_id, resource_type
