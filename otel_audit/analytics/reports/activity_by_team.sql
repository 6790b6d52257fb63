-- name: activity_by_team
-- description: Activity per team: records, distinct users, failures, confidential access and changes.
-- controls: SOC 2 CC7.2; HIPAA 164.312(b); NIST 800-53 AU-6; NIST 800-53 AU-7
-- param: since TIMESTAMPTZ = NULL | Only records at or after this time
-- param: until TIMESTAMPTZ = NULL | Only records before this time
SELECT coalesce(team_id, '(none)') AS team,
       count(*) AS records,
       count(DISTINCT user_id) AS users,
       count(*) FILTER (WHERE NOT success) AS failures,
       count(*) FILTER (WHERE data_classification IN ('confidential', 'restricted'))
           AS confidential,
       count(*) FILTER (WHERE upper(action) IN ('CREATE', 'UPDATE', 'DELETE')) AS changes
FROM audit_trails
WHERE ($since::TIMESTAMPTZ IS NULL OR "timestamp" >= $since::TIMESTAMPTZ)
  AND ($until::TIMESTAMPTZ IS NULL OR "timestamp" < $until::TIMESTAMPTZ)
GROUP BY team
ORDER BY records DESC, team
