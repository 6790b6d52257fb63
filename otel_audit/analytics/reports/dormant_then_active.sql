-- name: dormant_then_active
-- description: Users active again after a gap of at least N days without any record (dormant accounts in use).
-- controls: PCI DSS 8.2.6; SOC 2 CC6.2; NIST 800-53 AC-2; NIST 800-53 AU-6
-- param: dormant_days INTEGER = 14 | Shortest gap that counts as dormant
WITH seq AS (
    SELECT user_id, "timestamp",
           -- ties need no tiebreak here: a tied row is a zero gap whichever comes first
           lag("timestamp") OVER (PARTITION BY user_id ORDER BY "timestamp") AS previous
    FROM audit_trails
)
SELECT user_id, previous AS last_seen, "timestamp" AS returned_at,
       round(epoch("timestamp" - previous) / 86400.0, 2) AS gap_days
FROM seq
WHERE previous IS NOT NULL
  -- microsecond arithmetic: interval math on TIMESTAMPTZ goes through ICU (much slower)
  AND epoch_us("timestamp") - epoch_us(previous) >= $dormant_days::BIGINT * 86400000000
ORDER BY returned_at, user_id
