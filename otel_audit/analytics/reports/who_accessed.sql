-- name: who_accessed
-- description: Everyone who read or changed one resource or data subject (a resource of type user), with counts and first/last access.
-- controls: PCI DSS 10.2.1.1; SOC 2 CC6.1; HIPAA 164.312(b); NIST 800-53 AU-2
-- param: resource_id VARCHAR | Resource ID or data subject, e.g. user-3
-- param: resource_type VARCHAR = NULL | Resource type (any when omitted)
SELECT user_id,
       count(*) AS accesses,
       count(*) FILTER (WHERE upper(action) IN ('READ', 'EXPORT')) AS reads,
       count(*) FILTER (WHERE upper(action) NOT IN ('READ', 'EXPORT')) AS other_actions,
       min("timestamp") AS first_access,
       max("timestamp") AS last_access,
       list(DISTINCT action ORDER BY action) AS actions
FROM audit_trails
WHERE resource_id = $resource_id
  AND ($resource_type::VARCHAR IS NULL OR resource_type = $resource_type::VARCHAR)
GROUP BY user_id
ORDER BY accesses DESC, user_id
