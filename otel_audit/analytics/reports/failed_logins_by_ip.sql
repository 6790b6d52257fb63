-- name: failed_logins_by_ip
-- description: Failed logins per client IP with the distinct users tried from it (password spraying).
-- controls: PCI DSS 10.2.1.4; SOC 2 CC6.1; NIST 800-53 AC-7; NIST 800-53 AU-6
-- param: min_failures INTEGER = 3 | Fewest failed logins from one IP worth reporting
SELECT client_ip,
       count(*) AS failures,
       count(DISTINCT user_id) AS users,
       list(DISTINCT user_id ORDER BY user_id) AS user_ids,
       min("timestamp") AS first_at,
       max("timestamp") AS last_at
FROM audit_trails
WHERE upper(action) = 'LOGIN' AND NOT success AND client_ip IS NOT NULL
GROUP BY client_ip
HAVING count(*) >= $min_failures::INTEGER
ORDER BY failures DESC, client_ip
