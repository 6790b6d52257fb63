-- name: new_client_for_user
-- description: A user appearing from a client IP or user agent not seen on that user's first record (new device or location).
-- controls: PCI DSS 10.2.1; SOC 2 CC6.1; SOC 2 CC7.2; NIST 800-53 AU-6; NIST 800-53 IA-3
WITH firsts AS (
    SELECT user_id, min("timestamp") AS user_first FROM audit_trails GROUP BY user_id
), clients AS (
    SELECT user_id, 'client_ip' AS kind, client_ip AS value, min("timestamp") AS first_seen
    FROM audit_trails WHERE client_ip IS NOT NULL GROUP BY user_id, client_ip
    UNION ALL
    SELECT user_id, 'user_agent' AS kind, user_agent AS value, min("timestamp") AS first_seen
    FROM audit_trails WHERE user_agent IS NOT NULL GROUP BY user_id, user_agent
)
SELECT c.user_id, c.kind, c.value, c.first_seen
FROM clients c JOIN firsts f USING (user_id)
WHERE c.first_seen > f.user_first
ORDER BY c.first_seen, c.user_id, c.kind, c.value
