-- name: first_time_access
-- description: A user's first touch of a resource class (resource type), optionally only first touches since a date.
-- controls: SOC 2 CC6.1; SOC 2 CC7.2; NIST 800-53 AU-6; NIST 800-53 AC-6
-- param: since TIMESTAMPTZ = NULL | Only first touches at or after this time
WITH firsts AS (
    -- arg_min picks the first record per group in one hash aggregation (no sort)
    SELECT user_id, resource_type,
           arg_min({'at': "timestamp", 'action': action, 'resource_id': resource_id,
                    'trace_id': trace_id}, ("timestamp", id)) AS first
    FROM audit_trails
    WHERE resource_type IS NOT NULL
    GROUP BY user_id, resource_type
)
SELECT user_id, resource_type, first.at AS first_at, first.action AS action,
       first.resource_id AS resource_id, first.trace_id AS trace_id
FROM firsts
WHERE $since::TIMESTAMPTZ IS NULL OR first.at >= $since::TIMESTAMPTZ
ORDER BY first_at, user_id, resource_type
