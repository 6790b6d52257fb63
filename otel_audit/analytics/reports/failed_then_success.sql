-- name: failed_then_success
-- description: Several consecutive failures of one action by one user followed by a success within a window (brute force, credential stuffing).
-- controls: PCI DSS 10.2.1.4; PCI DSS 8.3.4; SOC 2 CC6.1; NIST 800-53 AU-6; NIST 800-53 AC-7
-- param: min_failures INTEGER = 3 | Fewest consecutive failures before the success
-- param: window_minutes INTEGER = 10 | Longest time from the first failure to the success
WITH failures AS (
    SELECT hash(user_id, action) AS k, epoch_us("timestamp") AS t
    FROM audit_trails
    WHERE NOT success
), candidates AS (
    -- A qualifying run has min_failures failures within window_minutes, so only users
    -- and actions with that many failures that close together can have one. Finding
    -- them sorts the failures alone; the full sort below then covers only their rows.
    SELECT DISTINCT k
    FROM (
        SELECT k, count(*) OVER (
                   PARTITION BY k ORDER BY t
                   RANGE BETWEEN CURRENT ROW
                         AND CAST($window_minutes AS BIGINT) * 60000000 FOLLOWING) AS n
        FROM failures
    )
    WHERE n >= $min_failures::INTEGER
), ordered AS (
    -- run = successes strictly before this row: a success closes the failures before it.
    -- Partitioning on a hash of (user, action) and ordering by time alone keeps the sort
    -- keys to two integers; records of one user and action at the very same microsecond
    -- have no defined order.
    SELECT user_id, action, "timestamp", success, trace_id, client_ip,
           sum(CAST(success AS INTEGER)) OVER (
               PARTITION BY hash(user_id, action) ORDER BY epoch_us("timestamp")
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
           - CAST(success AS INTEGER) AS run
    FROM audit_trails
    WHERE hash(user_id, action) IN (SELECT k FROM candidates)
), runs AS (
    SELECT user_id, action, run,
           count(*) FILTER (WHERE NOT success) AS failures,
           min("timestamp") FILTER (WHERE NOT success) AS first_failure,
           max("timestamp") FILTER (WHERE success) AS success_at,
           any_value(trace_id) FILTER (WHERE success) AS trace_id,
           list(DISTINCT client_ip ORDER BY client_ip) AS client_ips
    FROM ordered
    GROUP BY user_id, action, run
)
SELECT user_id, action, failures, first_failure, success_at, client_ips, trace_id
FROM runs
WHERE success_at IS NOT NULL
  AND failures >= $min_failures::INTEGER
  AND epoch_us(success_at) - epoch_us(first_failure)
      <= CAST($window_minutes AS BIGINT) * 60000000
ORDER BY success_at, user_id
