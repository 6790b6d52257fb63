-- name: acting_as_usage
-- description: Actions taken on behalf of another user (acting_as): which actor for whom, how often, what.
-- controls: PCI DSS 10.2.1.2; SOC 2 CC6.3; NIST 800-53 AU-3; NIST 800-53 AC-6
SELECT user_id AS actor, acting_as AS on_behalf_of,
       count(*) AS actions,
       count(*) FILTER (WHERE NOT success) AS failed,
       list(DISTINCT action ORDER BY action) AS action_types,
       min("timestamp") AS first_at,
       max("timestamp") AS last_at
FROM audit_trails
WHERE acting_as IS NOT NULL
GROUP BY user_id, acting_as
ORDER BY actions DESC, actor, on_behalf_of
