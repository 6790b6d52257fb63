-- name: confidential_access
-- description: Access to confidential and restricted data by user, team and day (UTC).
-- controls: PCI DSS 10.2.1.1; SOC 2 CC6.1; HIPAA 164.312(b); NIST 800-53 AU-2
-- make_timestamp(epoch_us(t)) is t as naive UTC: date/hour parts without the ICU time-zone path (10x faster)
SELECT user_id, team_id, CAST(make_timestamp(epoch_us("timestamp")) AS DATE) AS day,
       count(*) AS accesses,
       count(*) FILTER (WHERE data_classification = 'restricted') AS restricted,
       count(*) FILTER (WHERE NOT success) AS failed
FROM audit_trails
WHERE data_classification IN ('confidential', 'restricted')
GROUP BY user_id, team_id, day
ORDER BY day, user_id, team_id
