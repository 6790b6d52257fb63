-- name: bulk_export_outliers
-- description: Exports whose row count (context.rows) is above the given percentile of all exports.
-- controls: PCI DSS 10.2.1.1; SOC 2 CC6.7; SOC 2 CC7.2; NIST 800-53 AU-6; NIST 800-53 SI-4
-- param: percentile DOUBLE = 0.99 | Percentile above which an export is an outlier
WITH exports AS (
    SELECT *, CAST(json_extract_string(context, '$.rows') AS BIGINT) AS rows_exported
    FROM audit_trails
    WHERE upper(action) = 'EXPORT'
), threshold AS (
    SELECT quantile_cont(rows_exported, $percentile::DOUBLE) AS threshold FROM exports
)
SELECT e."timestamp", e.user_id, e.team_id, e.resource_type, e.resource_id, e.rows_exported,
       round(t.threshold, 2) AS threshold, e.trace_id, e.id  -- shown rounded, compared exact
FROM exports e, threshold t
WHERE e.rows_exported > t.threshold
ORDER BY e.rows_exported DESC, e.id
