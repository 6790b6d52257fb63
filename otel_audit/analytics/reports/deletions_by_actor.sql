-- name: deletions_by_actor
-- description: Deletions per actor, failed ones included, with the resource types touched.
-- controls: PCI DSS 10.2.1.7; SOC 2 CC8.1; HIPAA 164.312(b); NIST 800-53 AU-2
-- param: since TIMESTAMPTZ = NULL | Only deletions at or after this time
-- param: until TIMESTAMPTZ = NULL | Only deletions before this time
SELECT user_id,
       count(*) AS deletions,
       count(*) FILTER (WHERE NOT success) AS failed,
       list(DISTINCT resource_type ORDER BY resource_type) AS resource_types,
       min("timestamp") AS first_deletion,
       max("timestamp") AS last_deletion
FROM audit_trails
WHERE upper(action) = 'DELETE'
  AND ($since::TIMESTAMPTZ IS NULL OR "timestamp" >= $since::TIMESTAMPTZ)
  AND ($until::TIMESTAMPTZ IS NULL OR "timestamp" < $until::TIMESTAMPTZ)
GROUP BY user_id
ORDER BY deletions DESC, user_id
