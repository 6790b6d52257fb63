-- name: delegated_actions
-- description: Actions taken through delegation (a non-empty delegation_chain or acting_as), per principal chain: actor, on whose behalf, through whom and how, with counts, outcomes and first/last time.
-- controls: SOC 2 CC6.1; SOC 2 CC6.3; ISO 27001 A.5.15; ISO 27001 A.5.16; ISO 27001 A.8.2; PCI DSS 10.2.2; NIST 800-53 AC-6; NIST 800-53 AU-3
-- param: since TIMESTAMPTZ = NULL | Only actions at or after this time
-- param: until TIMESTAMPTZ = NULL | Only actions before this time
-- param: principal VARCHAR = NULL | Only chains naming this principal (as actor, acting_as or in the delegation chain)
--
-- A chain reads in the order the record holds it: "principal (via) > principal (via)"
-- (no parentheses for an empty via); an entry that is not a {"principal", "via"} object
-- (none is stored so, but an archive may hold anything) shows as its JSON text. Records
-- written before the column existed (NULL) and empty chains count only through acting_as.
WITH delegated AS (
    SELECT user_id, acting_as, auth_method, action, success, "timestamp",
           CASE WHEN json_array_length(delegation_chain) > 0
                THEN CAST(delegation_chain AS JSON[]) END AS entries
    FROM audit_trails
    WHERE (acting_as <> '' OR json_array_length(delegation_chain) > 0)
      AND ($since::TIMESTAMPTZ IS NULL OR "timestamp" >= $since::TIMESTAMPTZ)
      AND ($until::TIMESTAMPTZ IS NULL OR "timestamp" < $until::TIMESTAMPTZ)
), chained AS (
    SELECT *,
           array_to_string(list_transform(entries, lambda e:
               coalesce(e->>'principal', CAST(e AS VARCHAR), 'null')
               || CASE WHEN coalesce(e->>'via', '') = '' THEN ''
                       ELSE ' (' || (e->>'via') || ')' END), ' > ') AS chain,
           list_transform(entries, lambda e: e->>'principal') AS principals
    FROM delegated
)
SELECT user_id AS actor,
       acting_as AS on_behalf_of,
       chain,
       coalesce(len(entries), 0) AS chain_length,
       count(*) AS actions,
       count(*) FILTER (WHERE success) AS succeeded,
       count(*) FILTER (WHERE NOT success) AS failed,
       list(DISTINCT action ORDER BY action) AS action_types,
       list(DISTINCT auth_method ORDER BY auth_method)
           FILTER (WHERE auth_method IS NOT NULL) AS auth_methods,
       min("timestamp") AS first_at,
       max("timestamp") AS last_at
FROM chained
WHERE $principal::VARCHAR IS NULL
   OR user_id = $principal::VARCHAR
   OR acting_as = $principal::VARCHAR
   OR list_contains(principals, $principal::VARCHAR)
GROUP BY user_id, acting_as, chain, chain_length
ORDER BY actions DESC, actor, on_behalf_of NULLS FIRST, chain NULLS FIRST
