-- name: pending_review
-- description: Records flagged requires_review with no review yet (a review is a record with action audit.review on resource audit_record/<id>).
-- controls: PCI DSS 10.4.1; SOC 2 CC7.3; HIPAA 164.308(a)(1)(ii)(D); NIST 800-53 AU-6
SELECT r."timestamp", r.user_id, r.action, r.resource_type, r.resource_id,
       r.data_classification, r.success, r.trace_id, r.id
FROM audit_trails r
WHERE r.requires_review
  AND NOT EXISTS (
      SELECT 1 FROM audit_trails v
      WHERE v.action = 'audit.review' AND v.resource_type = 'audit_record'
        AND v.resource_id = r.id)
ORDER BY r."timestamp", r.id
