-- name: privileged_after_hours
-- description: Privileged actions (changes, exports, executions, restricted data) outside business hours (UTC) or at weekends.
-- controls: PCI DSS 10.2.1.2; SOC 2 CC6.8; SOC 2 CC7.2; NIST 800-53 AU-6
-- param: start_hour INTEGER = 8 | First business hour (UTC)
-- param: end_hour INTEGER = 18 | First hour after business (UTC)
-- make_timestamp(epoch_us(t)) is t as naive UTC: date/hour parts without the ICU time-zone path (10x faster)
SELECT "timestamp", user_id, acting_as, action, resource_type, resource_id,
       data_classification, success, trace_id, id
FROM audit_trails
WHERE (upper(action) IN ('CREATE', 'UPDATE', 'DELETE', 'EXPORT', 'EXECUTE', 'GRANT', 'REVOKE')
       OR data_classification = 'restricted')
  AND (hour(make_timestamp(epoch_us("timestamp"))) < $start_hour::INTEGER
       OR hour(make_timestamp(epoch_us("timestamp"))) >= $end_hour::INTEGER
       OR isodow(make_timestamp(epoch_us("timestamp"))) >= 6)
ORDER BY "timestamp", id
