-- name: failure_spikes
-- description: Days on which a user failed far more often than on that user's other active days (own baseline).
-- controls: PCI DSS 10.2.1.4; PCI DSS 10.4.1; SOC 2 CC7.2; NIST 800-53 AU-6
-- param: min_failures INTEGER = 3 | Fewest failures in a day worth reporting
-- param: factor DOUBLE = 3.0 | How many times the user's baseline counts as a spike
-- make_timestamp(epoch_us(t)) is t as naive UTC: date/hour parts without the ICU time-zone path (10x faster)
WITH daily AS (
    SELECT user_id, CAST(make_timestamp(epoch_us("timestamp")) AS DATE) AS day,
           count(*) FILTER (WHERE NOT success) AS failures
    FROM audit_trails
    GROUP BY user_id, day
), baseline AS (
    SELECT user_id, day, failures,
           coalesce((sum(failures) OVER (PARTITION BY user_id) - failures)
                    / nullif(count(*) OVER (PARTITION BY user_id) - 1, 0), 0) AS baseline
    FROM daily
)
SELECT user_id, day, failures, round(baseline, 3) AS baseline
FROM baseline
WHERE failures >= $min_failures::INTEGER
  AND failures > $factor::DOUBLE * baseline
ORDER BY day, user_id
