-- Every row of every table segments keeps (those it marks for pg_dump), by
-- table, bitmaps included; then the capture triggers and members views.
SELECT format('SELECT %L, count(*), md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) FROM segments.%I t',
              c.relname, c.relname)
  FROM pg_catalog.pg_extension x, unnest(x.extconfig) AS e(oid)
  JOIN pg_catalog.pg_class c ON c.oid = e.oid
 WHERE x.extname = 'segments' AND c.relkind = 'r'
 ORDER BY c.relname
\gexec
SELECT 'capture', count(*), md5(string_agg(pg_get_triggerdef(oid), E'\n' ORDER BY tgname)) FROM pg_trigger WHERE tgname LIKE 'segments\_live\_%';
SELECT 'members views', count(*), md5(string_agg(v::text, ',' ORDER BY v::text)) FROM segments.customer_members v;
SELECT 'view grant', has_table_privilege('bi_reader', 'segments.customer_members', 'SELECT');
