-- The views of activation (sql/activation.sql has the tables).

-- Every record a priority list assigns, with the one segment it goes to:
-- the first listed segment it is a member of. Computed from the stored
-- memberships as it is read, so every refresh and live apply of a listed
-- segment shows at once. Keys as the caller may read them (nothing for an
-- entity whose table the caller may not SELECT).
CREATE VIEW segments.priority_assignment AS
SELECT l.name AS list, a.key, a.segment_id
  FROM segments.priority_list l
 CROSS JOIN LATERAL segments._priority_members(l.id) a;
