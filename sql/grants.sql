-- Every management function taking `segments bigint[]` also takes one id
-- (`segments.activate(2)`) and an untyped literal (`segments.refresh(NULL)`,
-- `segments.activate('{1,2}')`): overloads on bigint and on text, made
-- here from the array forms so that they never drift. The text form keeps
-- untyped calls unambiguous: an unknown literal prefers the string type.
DO $$
DECLARE
    f record;
    args text;
    call_args text;
    body text;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname, p.proretset, pg_catalog.pg_get_function_result(p.oid) AS result,
               p.proargnames, p.proargtypes::oid[] AS types, p.pronargs
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'segments'::regnamespace
           AND p.proname NOT LIKE '\_%'
           AND 'segments' = ANY (p.proargnames)
           AND p.proargtypes[pg_catalog.array_position(p.proargnames, 'segments') - 1] = 'bigint[]'::regtype
         ORDER BY p.proname
    LOOP
        FOR single IN 1..2 LOOP
            -- The array form's arguments, defaults included, with segments
            -- retyped (and without a default of its own).
            args := regexp_replace(pg_catalog.pg_get_function_arguments(f.oid),
                                   'segments bigint\[\]( DEFAULT [^,]*)?',
                                   'segments ' || CASE single WHEN 1 THEN 'bigint' ELSE 'text' END);
            call_args := '';
            FOR i IN 1..f.pronargs LOOP
                IF i > 1 THEN
                    call_args := call_args || ', ';
                END IF;
                IF f.proargnames[i] = 'segments' THEN
                    call_args := call_args || CASE single
                        WHEN 1 THEN 'CASE WHEN $' || i || ' IS NULL THEN NULL ELSE ARRAY[$' || i || '] END'
                        ELSE 'CASE WHEN $' || i || ' IS NULL THEN NULL WHEN pg_catalog.btrim($' || i || ') LIKE ''{%'' THEN $' || i || '::bigint[] ELSE ARRAY[$' || i || '::bigint] END'
                    END;
                ELSE
                    call_args := call_args || '$' || i;
                END IF;
            END LOOP;
            body := CASE WHEN f.proretset OR f.result LIKE 'TABLE(%'
                         THEN 'SELECT * FROM segments.' || pg_catalog.quote_ident(f.proname) || '(' || call_args || ')'
                         ELSE 'SELECT segments.' || pg_catalog.quote_ident(f.proname) || '(' || call_args || ')' END;
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION segments.%I(%s) RETURNS %s LANGUAGE sql SET search_path = pg_catalog, pg_temp AS %L',
                f.proname, args, f.result, body);
            EXECUTE pg_catalog.format(
                'COMMENT ON FUNCTION segments.%I(%s) IS %L',
                f.proname, regexp_replace(args, ' DEFAULT [^,]*', '', 'g'),
                'Same as ' || f.proname || '(segments bigint[]), for ' ||
                CASE single WHEN 1 THEN 'one segment id.' ELSE 'an untyped literal: NULL, one id or an array literal.' END);
        END LOOP;
    END LOOP;
END
$$;

-- Privileges, granted once every object exists (see README, "Security
-- model"). Readers read; editors write segments.segment, the only table
-- writable by DML; everything else is internal state that only the
-- extension's functions change, as the extension's owner, after checking
-- what the caller may do.
GRANT USAGE ON SCHEMA segments TO segments_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA segments TO segments_reader;
GRANT INSERT, UPDATE, DELETE ON segments.segment TO segments_editor;
GRANT USAGE ON SEQUENCE segments.segment_id_seq TO segments_editor;
-- The live queue and kept related values hold keys and conditions' answers
-- computed with their owners' privileges: not for readers.
REVOKE SELECT ON segments.change_queue, segments.related_state, segments.capture_slot FROM segments_reader;

-- Keys stay private: a role reads the keys of an entity only if it may
-- SELECT the entity's table.
ALTER TABLE segments.entity_key ENABLE ROW LEVEL SECURITY;
CREATE POLICY entity_key_readable ON segments.entity_key FOR SELECT
    USING (segments._can_read_entity(entity));
-- Trait values are keys and what was computed from their rows: the same.
ALTER TABLE segments.trait_value ENABLE ROW LEVEL SECURITY;
CREATE POLICY trait_value_readable ON segments.trait_value FOR SELECT
    USING (segments._can_read_entity((SELECT t.entity FROM segments.trait t WHERE t.id OPERATOR(pg_catalog.=) trait_id)));

-- Internal functions (named _...) are not for PUBLIC. The roles get the
-- ones that public functions, views, policies and triggers call as the
-- caller; each of those checks the caller itself or only reads.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'segments'::regnamespace AND p.proname LIKE '\_%' LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'segments'::regnamespace
                AND p.proname IN ('_internal_write', '_require_may_change', '_may_change', '_is_admin',
                                  '_check_schedule', '_check_definition', '_check_active_limit',
                                  '_dependents', '_referenced_segments', '_require_segments',
                                  '_connected_sequences', '_next_refresh_epoch', '_can_read_entity',
                                  '_is_member', '_segments_of', '_run_due', '_estimate',
                                  '_sync_capture', '_apply_changes', '_explain_member', '_active_limit', '_dependent_list', '_setting', '_restoring',
                                  '_activity', '_schedulers', '_priority_members') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO segments_reader', f);
    END LOOP;
END
$$;

-- Comments on every public object: a \d+ or \df+ reader understands each
-- without the README.
COMMENT ON TABLE segments.change_queue IS 'Keys changed in tables live segments read, waiting for apply_changes() (internal).';
COMMENT ON COLUMN segments.change_queue.entity IS 'The entity whose key changed.';
COMMENT ON COLUMN segments.change_queue.key IS 'The key as text; NULL: the whole table changed (TRUNCATE).';
COMMENT ON COLUMN segments.change_queue.queued_at IS 'When the change was captured.';
COMMENT ON COLUMN segments.change_queue.source IS 'The related table whose rows changed; NULL: the entity''s own row.';
COMMENT ON COLUMN segments.change_queue.image IS 'The entity''s new row as the capture trigger saw it (internal format), so that apply_changes need not read it again; NULL: read the table.';
COMMENT ON TABLE segments.capture_slot IS 'WAL capture: the database''s replication slot and how far its changes are queued (internal).';
COMMENT ON COLUMN segments.capture_slot.slot_name IS 'The logical replication slot, segments_<database oid>.';
COMMENT ON COLUMN segments.capture_slot.decoded_upto IS 'Changes up to here are in change_queue (committed); the slot is advanced to it by the next decoding.';
COMMENT ON COLUMN segments.capture_slot.created_at IS 'When the slot was made (and the live segments refreshed in full).';
COMMENT ON TABLE segments.related_state IS 'Live segments: the last value of each related condition, kept between applications (internal).';
COMMENT ON COLUMN segments.related_state.owner IS 'The role whose privileges computed the value.';
COMMENT ON COLUMN segments.related_state.entity IS 'The entity.';
COMMENT ON COLUMN segments.related_state.leaf IS 'md5 of the condition''s query at a fixed reference time.';
COMMENT ON COLUMN segments.related_state.matching IS 'Bitmap: positions where the condition holds.';
COMMENT ON COLUMN segments.related_state.with_rows IS 'Bitmap, aggregates only: positions with any related row.';
COMMENT ON COLUMN segments.related_state.computed_at IS 'When the value was last computed or patched.';
COMMENT ON TABLE segments.entity IS 'Registered entities: tables whose rows segments group.';
COMMENT ON COLUMN segments.entity.name IS 'Entity name.';
COMMENT ON COLUMN segments.entity.relation IS 'The entity table.';
COMMENT ON COLUMN segments.entity.key_column IS 'Its key column.';
COMMENT ON COLUMN segments.entity.key_kind IS 'integer (keys are positions) or dictionary (positions from entity_key).';
COMMENT ON COLUMN segments.entity.key_type IS 'Type of the key column.';
COMMENT ON COLUMN segments.entity.eligible IS 'Condition every member of every segment of the entity meets.';
COMMENT ON COLUMN segments.entity.created_at IS 'When it was registered.';
COMMENT ON TABLE segments.entity_key IS 'Bitmap positions of text and uuid keys; rows are visible only to roles that may read the entity table.';
COMMENT ON COLUMN segments.entity_key.entity IS 'The entity.';
COMMENT ON COLUMN segments.entity_key.position IS 'The key''s bitmap position.';
COMMENT ON COLUMN segments.entity_key.key IS 'The key as text.';
COMMENT ON TABLE segments.export IS 'Exports: tables kept holding the members of some segments.';
COMMENT ON COLUMN segments.export.id IS 'Export id.';
COMMENT ON COLUMN segments.export.name IS 'Export name.';
COMMENT ON COLUMN segments.export.entity IS 'Entity of its segments.';
COMMENT ON COLUMN segments.export.segments IS 'The segments exported.';
COMMENT ON COLUMN segments.export.target IS 'The table written.';
COMMENT ON COLUMN segments.export.owner IS 'The role that created it; rewrites run as this role.';
COMMENT ON COLUMN segments.export.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.export.status IS 'Outcome of the last rewrite: not_written, succeeded or failed.';
COMMENT ON COLUMN segments.export.last_error IS 'Error of the last failed rewrite.';
COMMENT ON COLUMN segments.export.last_written_at IS 'When it was last rewritten.';
COMMENT ON COLUMN segments.export.traits IS 'The traits it carries, as columns after the entity''s.';
COMMENT ON TABLE segments.trait IS 'Traits: named values computed per record from a related table (create_trait), shown by segments.<entity>_traits.';
COMMENT ON COLUMN segments.trait.id IS 'Trait id.';
COMMENT ON COLUMN segments.trait.name IS 'Trait name: the column of segments.<entity>_traits, and what {"trait": ...} conditions name.';
COMMENT ON COLUMN segments.trait.entity IS 'The entity whose records it describes.';
COMMENT ON COLUMN segments.trait.definition IS '{"related", "aggregate", "attribute"?, "where"?, "within"?}.';
COMMENT ON COLUMN segments.trait.description IS 'Free text.';
COMMENT ON COLUMN segments.trait.owner IS 'The role that created it; its values are computed as this role.';
COMMENT ON COLUMN segments.trait.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.trait.refreshed_at IS 'When its values were last stored (NULL: never).';
COMMENT ON TABLE segments.trait_value IS 'Stored trait values, one row per trait and record with related rows (internal; read segments.<entity>_traits). Rows are visible only to roles that may read the entity table.';
COMMENT ON COLUMN segments.trait_value.trait_id IS 'The trait.';
COMMENT ON COLUMN segments.trait_value.key IS 'The record''s key, as text.';
COMMENT ON COLUMN segments.trait_value.value IS 'The value, as jsonb.';
COMMENT ON FUNCTION segments.create_trait(text,text,jsonb,text) IS 'Creates a trait (a named value per record, e.g. lifetime value), computed as its creator; stores its values and adds its column to segments.<entity>_traits. Editors.';
COMMENT ON FUNCTION segments.drop_trait(text) IS 'Drops a trait and its column of segments.<entity>_traits; refused while a segment or an export uses it. Its owner or an admin.';
COMMENT ON FUNCTION segments.refresh_traits(text) IS 'Computes and stores the values of every trait of the entity (NULL: of every entity), each as its owner; returns how many values it stored. Editors.';
COMMENT ON TABLE segments.membership IS 'The members of each segment as a Roaring bitmap of key positions (one row per segment).';
COMMENT ON COLUMN segments.membership.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.membership.members IS 'Serialized Roaring treemap of member positions.';
COMMENT ON COLUMN segments.membership.member_count IS 'Number of members.';
COMMENT ON COLUMN segments.membership.refreshed_at IS 'When it was computed.';
COMMENT ON TABLE segments.membership_change IS 'Who entered and who exited a segment, per refresh run.';
COMMENT ON COLUMN segments.membership_change.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.membership_change.run_id IS 'The refresh run.';
COMMENT ON COLUMN segments.membership_change.key IS 'The record''s key as text.';
COMMENT ON COLUMN segments.membership_change.change IS 'entered or exited.';
COMMENT ON COLUMN segments.membership_change.at IS 'When.';
COMMENT ON TABLE segments.refresh_run IS 'History: one row per refresh (or live application) of a segment.';
COMMENT ON COLUMN segments.refresh_run.id IS 'Run id.';
COMMENT ON COLUMN segments.refresh_run.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.refresh_run.trigger IS 'manual, schedule, system or live.';
COMMENT ON COLUMN segments.refresh_run.started_at IS 'Start.';
COMMENT ON COLUMN segments.refresh_run.finished_at IS 'End.';
COMMENT ON COLUMN segments.refresh_run.status IS 'succeeded, failed, skipped or running.';
COMMENT ON COLUMN segments.refresh_run.member_count IS 'Members after the run.';
COMMENT ON COLUMN segments.refresh_run.entered IS 'Records that entered.';
COMMENT ON COLUMN segments.refresh_run.exited IS 'Records that exited.';
COMMENT ON COLUMN segments.refresh_run.error IS 'Error of a failed run.';
COMMENT ON COLUMN segments.refresh_run.keys_examined IS 'Keys a live application evaluated.';
COMMENT ON COLUMN segments.refresh_run.error_code IS 'The SQLSTATE of a failed run''s error, e.g. 42703 for a column that no longer exists.';
COMMENT ON COLUMN segments.refresh_run.peak_memory IS 'The most memory (bytes) the refresh or live application held at once for its own values (bitmaps, plans, leaf values) until this segment was stored; PostgreSQL''s query memory (work_mem) is not counted. NULL before 0.3.0.';
COMMENT ON TABLE segments.related IS 'Registered related (one-to-many) tables of entities.';
COMMENT ON COLUMN segments.related.entity IS 'The entity.';
COMMENT ON COLUMN segments.related.name IS 'Name used in definitions.';
COMMENT ON COLUMN segments.related.relation IS 'The table.';
COMMENT ON COLUMN segments.related.foreign_key IS 'Column holding the entity key (with via: the via table''s primary key).';
COMMENT ON COLUMN segments.related.time_column IS 'Column within windows measure against.';
COMMENT ON COLUMN segments.related.via IS 'A path: the related table whose primary key foreign_key references (NULL: foreign_key holds the entity key).';
COMMENT ON TABLE segments.scheduler_state IS 'When the scheduler last ran its cluster-wide jobs (internal).';
COMMENT ON COLUMN segments.scheduler_state.job IS 'system or cleanup.';
COMMENT ON COLUMN segments.scheduler_state.last_run IS 'When it last ran.';
COMMENT ON TABLE segments.segment IS 'The segments; writable by DML on segments the caller may change, guarded by lifecycle triggers.';
COMMENT ON COLUMN segments.segment.id IS 'Segment id.';
COMMENT ON COLUMN segments.segment.name IS 'Unique name.';
COMMENT ON COLUMN segments.segment.description IS 'Free text.';
COMMENT ON COLUMN segments.segment.entity IS 'The entity it groups.';
COMMENT ON COLUMN segments.segment.definition IS 'The rules (jsonb), segment references stored by id.';
COMMENT ON COLUMN segments.segment.type IS 'static or dynamic.';
COMMENT ON COLUMN segments.segment.state IS 'active or inactive.';
COMMENT ON COLUMN segments.segment.status IS 'Outcome of the last refresh: not_refreshed, running, succeeded, failed or skipped.';
COMMENT ON COLUMN segments.segment.member_count IS 'Members at the last refresh.';
COMMENT ON COLUMN segments.segment.last_refreshed_at IS 'When it was last refreshed.';
COMMENT ON COLUMN segments.segment.last_error IS 'Error of the last failed refresh.';
COMMENT ON COLUMN segments.segment.schedule IS 'system, live, daily, weekly, monthly, manual or a cron expression.';
COMMENT ON COLUMN segments.segment.tags IS 'Tags.';
COMMENT ON COLUMN segments.segment.never_expire IS 'Left alone by the unused-segment cleanup (admins only).';
COMMENT ON COLUMN segments.segment.priority IS 'Sequence priority (lower first).';
COMMENT ON COLUMN segments.segment.move_existing IS 'May take records connected to other sequences when of higher priority.';
COMMENT ON COLUMN segments.segment.owner IS 'The role it belongs to; it is evaluated with its privileges.';
COMMENT ON COLUMN segments.segment.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.segment.updated_at IS 'When a person last changed it.';
COMMENT ON COLUMN segments.segment.updated_by IS 'Who last changed it.';
COMMENT ON COLUMN segments.segment.rule_counts IS 'Per-rule counts of the last refresh; NULL after a definition change.';
COMMENT ON COLUMN segments.segment.needs_refresh IS 'Due for computation (created, changed or resumed).';
COMMENT ON COLUMN segments.segment.consecutive_failures IS 'Failed refreshes in a row (0 after a success).';
COMMENT ON VIEW segments.segment_list IS 'One row per segment, as the segment list shows it.';
COMMENT ON COLUMN segments.segment_list.id IS 'Segment id.';
COMMENT ON COLUMN segments.segment_list.name IS 'Name.';
COMMENT ON COLUMN segments.segment_list.description IS 'Description.';
COMMENT ON COLUMN segments.segment_list.entity IS 'Entity.';
COMMENT ON COLUMN segments.segment_list.type IS 'static or dynamic.';
COMMENT ON COLUMN segments.segment_list.state IS 'active or inactive.';
COMMENT ON COLUMN segments.segment_list.status IS 'Outcome of the last refresh.';
COMMENT ON COLUMN segments.segment_list.member_count IS 'Members.';
COMMENT ON COLUMN segments.segment_list.last_refreshed_at IS 'Last refresh.';
COMMENT ON COLUMN segments.segment_list.last_error IS 'Last error.';
COMMENT ON COLUMN segments.segment_list.schedule IS 'Schedule.';
COMMENT ON COLUMN segments.segment_list.tags IS 'Tags.';
COMMENT ON COLUMN segments.segment_list.never_expire IS 'Excluded from cleanup.';
COMMENT ON COLUMN segments.segment_list.priority IS 'Sequence priority.';
COMMENT ON COLUMN segments.segment_list.owner IS 'Owner.';
COMMENT ON COLUMN segments.segment_list.created_at IS 'Created.';
COMMENT ON COLUMN segments.segment_list.updated_at IS 'Last changed by a person.';
COMMENT ON COLUMN segments.segment_list.next_refresh_at IS 'When it will next be computed (NULL: only when asked).';
COMMENT ON COLUMN segments.segment_list.usage_count IS 'Live usages.';
COMMENT ON COLUMN segments.segment_list.consecutive_failures IS 'Failed refreshes in a row.';
COMMENT ON TABLE segments.sequence IS 'Sales sequences.';
COMMENT ON COLUMN segments.sequence.id IS 'Sequence id.';
COMMENT ON COLUMN segments.sequence.name IS 'Name.';
COMMENT ON COLUMN segments.sequence.entity IS 'Entity of its records.';
COMMENT ON COLUMN segments.sequence.created_at IS 'Created.';
COMMENT ON COLUMN segments.sequence.owner IS 'The role that created it.';
COMMENT ON TABLE segments.sequence_record IS 'Records connected to sequences (one sequence per record of an entity).';
COMMENT ON COLUMN segments.sequence_record.entity IS 'Entity.';
COMMENT ON COLUMN segments.sequence_record.key IS 'Record key as text.';
COMMENT ON COLUMN segments.sequence_record.sequence_id IS 'The sequence.';
COMMENT ON COLUMN segments.sequence_record.segment_id IS 'The segment that connected it (NULL once deleted, or by hand).';
COMMENT ON COLUMN segments.sequence_record.segment_name IS 'That segment''s name at the time.';
COMMENT ON COLUMN segments.sequence_record.connected_at IS 'When.';
COMMENT ON VIEW segments.sequence_records IS 'Records connected to sequences, by sequence name.';
COMMENT ON COLUMN segments.sequence_records.sequence IS 'Sequence name.';
COMMENT ON COLUMN segments.sequence_records.key IS 'Record key.';
COMMENT ON COLUMN segments.sequence_records.segment_id IS 'Segment that connected it.';
COMMENT ON COLUMN segments.sequence_records.segment_name IS 'Its name at the time.';
COMMENT ON COLUMN segments.sequence_records.connected_at IS 'When.';
COMMENT ON TABLE segments.sequence_segment IS 'Segments connected to sequences (at most one sequence per segment).';
COMMENT ON COLUMN segments.sequence_segment.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.sequence_segment.sequence_id IS 'The sequence.';
COMMENT ON COLUMN segments.sequence_segment.connected_at IS 'When.';
COMMENT ON TABLE segments.similarity_score IS 'Scores of the members of segments made by find_similar.';
COMMENT ON COLUMN segments.similarity_score.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.similarity_score.key IS 'Record key.';
COMMENT ON COLUMN segments.similarity_score.score IS 'Score 0 to 1.';
COMMENT ON VIEW segments.usage IS 'Every usage of every segment.';
COMMENT ON COLUMN segments.usage.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.usage.kind IS 'export, measure, segment, journey, campaign, test_list, message, sequence or analytics.';
COMMENT ON COLUMN segments.usage.consumer IS 'Who uses it (a segment by name).';
COMMENT ON COLUMN segments.usage.live IS 'Whether it keeps the segment in use.';
COMMENT ON COLUMN segments.usage.since IS 'Since when.';
COMMENT ON TABLE segments.usage_kind IS 'The kinds of usage add_usage accepts; recorded_by_segments kinds are written by the extension itself.';
COMMENT ON COLUMN segments.usage_kind.kind IS 'Usage kind, e.g. journey.';
COMMENT ON COLUMN segments.usage_kind.recorded_by_segments IS 'Whether only the extension records usages of this kind (segment, export, sequence).';
COMMENT ON TABLE segments.usage_registry IS 'What uses each segment (internal; see view usage).';
COMMENT ON COLUMN segments.usage_registry.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.usage_registry.kind IS 'Usage kind.';
COMMENT ON COLUMN segments.usage_registry.consumer IS 'Who uses it.';
COMMENT ON COLUMN segments.usage_registry.live IS 'Whether it keeps the segment in use.';
COMMENT ON COLUMN segments.usage_registry.since IS 'Since when.';
COMMENT ON FUNCTION segments.find_similar(bigint,text,bigint,integer,boolean,text) IS 'Creates a static segment of the customers most like the members of source (logistic regression on the entity''s numeric and categorical columns), the best size_percent of target (or everyone) scoring 0.4 or more (or min_band: high, medium, low); returns its id.';
COMMENT ON FUNCTION segments.create_sequence(text,text) IS 'Creates a sales sequence for an entity, owned by the caller; returns its id.';
COMMENT ON FUNCTION segments.remove_usage(bigint,text,text) IS 'Removes a usage recorded with add_usage (kinds segment, export and sequence are the extension''s own).';
COMMENT ON FUNCTION segments.connect_records(bigint,text[]) IS 'Connects records (entity keys as text) to a sequence by hand; returns how many were newly connected.';
COMMENT ON FUNCTION segments.overlap(bigint,bigint) IS 'Members only in a, in both, and only in b.';
COMMENT ON FUNCTION segments.drop_export(text) IS 'Drops an export and its target table (its owner, or an admin).';
COMMENT ON FUNCTION segments.unregister_entity(text) IS 'Removes an entity registration and its members view; refused while segments use it; works when the table is gone. Admins only.';
COMMENT ON FUNCTION segments.is_member(bigint,anyelement) IS 'Whether the record with this key (in its own type) is a member of the segment at its last refresh.';
COMMENT ON FUNCTION segments.is_member(bigint,text) IS 'Whether the record with this key (as text) is a member of the segment at its last refresh.';
COMMENT ON FUNCTION segments.segments_of(text,anyelement) IS 'The segments of an entity the record with this key (in its own type) is a member of, with its group in each split segment.';
COMMENT ON FUNCTION segments.segments_of(text,text) IS 'The segments of an entity the record with this key (as text) is a member of, with its group in each split segment.';
COMMENT ON FUNCTION segments.similarity(bigint) IS 'The score (0 to 1) and band (high from 0.85, medium from 0.7, low from 0.55) of each member of a segment made by find_similar.';
COMMENT ON FUNCTION segments.add_usage(bigint,text,text,boolean) IS 'Records that consumer (a journey, campaign, measure...) uses the segment; live false does not keep it in use.';
COMMENT ON FUNCTION segments.create_export(text,bigint[],text,text[],text) IS 'Creates table target, owned by the caller, holding the members of the segments (segment_name, split_group, the entity''s columns, then the traits named), or with priority_list (segments NULL) each record that list assigns under its segment; rewritten after each of their refreshes; returns the export id.';
COMMENT ON FUNCTION segments.attribute_values(text,text,text,integer) IS 'The most frequent values of an entity column (optionally containing search), with their row counts: a value picker.';
COMMENT ON FUNCTION segments.connect_sequence(bigint,bigint[]) IS 'Connects segments to a sequence: records entering them start it; returns how many segments were newly connected.';
COMMENT ON FUNCTION segments.preview(bigint,integer) IS 'The first n members of a segment as JSON rows of the entity table, read with the caller''s privileges.';
COMMENT ON FUNCTION segments.refresh(bigint[]) IS 'Recomputes the given segments (NULL: every active segment) now, each as its owner; one row per segment with its outcome.';
COMMENT ON FUNCTION segments.bitmap(bigint) IS 'The segment''s members as a portable Roaring bitmap of key positions (32-bit format when positions fit).';
COMMENT ON FUNCTION segments.explain(bigint) IS 'The SQL a refresh of the segment runs, one statement per leaf query.';
COMMENT ON FUNCTION segments.register_entity(text,regclass,text,jsonb) IS 'Registers a table whose rows segments group, its key column and an optional eligibility condition; creates view segments.<entity>_members. Admins only.';
COMMENT ON FUNCTION segments.rule_counts(bigint) IS 'Members per rule and subrule at the last refresh: the rule alone and cumulative with the rules before it.';
COMMENT ON FUNCTION segments.suggest(text,text,text[],integer) IS 'Suggested segments: splits of the population whose average measure differs most from everyone''s, as ready definitions.';
COMMENT ON FUNCTION segments.unregister_related(text,text) IS 'Removes a related table registration; refused while segments read it; works when the table is gone. Admins only.';
COMMENT ON FUNCTION segments.member_positions(bigint) IS 'The bitmap positions of a segment''s members.';
COMMENT ON FUNCTION segments.bitmap_positions(bytea) IS 'The positions in a serialized bitmap (the members views join them to the entity table; pure, so it may run on Citus workers).';
COMMENT ON FUNCTION segments.disconnect_sequence(bigint,bigint[]) IS 'Disconnects segments from a sequence; records already connected stay; returns how many were disconnected.';
COMMENT ON FUNCTION segments.create_segment(text,jsonb,text,text,text,text[],integer,boolean) IS 'Creates a segment from a definition, owned by the caller; returns its id.';
COMMENT ON FUNCTION segments.quick_segment(text,text,text,text,jsonb) IS 'Creates a segment of one attribute condition; returns its id.';
COMMENT ON FUNCTION segments.duplicate(bigint,text) IS 'Copies a segment (definition, type, schedule, tags, priority) as ''<name> (copy)'' or the given name; returns the new id.';
COMMENT ON FUNCTION segments.rename(bigint,text) IS 'Renames a segment; segments that read it keep working.';
COMMENT ON FUNCTION segments.activate(bigint[]) IS 'Activates (resumes computation of) segments; returns how many changed.';
COMMENT ON FUNCTION segments.deactivate(bigint[], boolean) IS 'Deactivates segments, keeping definition and membership; returns them with their connected sequences and what reads them (also as NOTICE and WARNING); dry_run changes nothing.';
COMMENT ON FUNCTION segments.set_type(bigint[],text) IS 'Makes segments static or dynamic; returns how many changed.';
COMMENT ON FUNCTION segments.set_schedule(bigint[],text) IS 'Sets the schedule (system, live, daily, weekly, monthly, manual or cron) of segments; returns how many changed.';
COMMENT ON FUNCTION segments.tag(bigint[],text[]) IS 'Adds tags to segments; returns how many changed.';
COMMENT ON FUNCTION segments.untag(bigint[],text[]) IS 'Removes tags from segments; returns how many changed.';
COMMENT ON FUNCTION segments.delete(bigint[], boolean) IS 'Deletes segments with their membership and history, refused while something else depends on one of them; returns them with their connected sequences and, with dry_run (which changes nothing), what depends on them.';
COMMENT ON FUNCTION segments.activate_sequence(bigint) IS 'Activates a sequence: records entering its segments start it. Sequence managers and admins.';
COMMENT ON FUNCTION segments.deactivate_sequence(bigint) IS 'Deactivates a sequence: it connects nobody new and keeps its records. Sequence managers and admins.';
COMMENT ON FUNCTION segments.drop_sequence(bigint) IS 'Drops a sequence with its connections and connected records. Sequence managers and admins.';
COMMENT ON FUNCTION segments.disconnect_records(bigint, text[]) IS 'Disconnects records (keys as text) from a sequence; returns how many. Sequence managers and admins.';
COMMENT ON COLUMN segments.sequence.state IS 'active or inactive: an inactive sequence connects nobody new.';
COMMENT ON FUNCTION segments.disable_auto_cleanup(bigint[]) IS 'Sets never_expire: the unused-segment cleanup leaves these segments alone. Admins only.';
COMMENT ON FUNCTION segments.enable_auto_cleanup(bigint[]) IS 'Clears never_expire. Admins only.';
COMMENT ON FUNCTION segments.trend(bigint,timestamp with time zone,timestamp with time zone,text) IS 'Member counts of a segment between since and until: after each successful refresh, or per bucket (hour, day, week, month) the last count and the entered and exited totals.';
COMMENT ON FUNCTION segments.deactivate_unused(interval,boolean) IS 'Deactivates (and tags AutoDeactivated) active segments without live usage created or updated longer ago than older_than; dry_run only lists them.';
COMMENT ON FUNCTION segments.run_due() IS 'One scheduler pass: the cleanup and the refreshes that are due; returns the runs recorded.';
COMMENT ON FUNCTION segments.apply_changes() IS 'Applies the row changes captured for live segments; returns the runs recorded (trigger live).';
COMMENT ON FUNCTION segments.set_priority(bigint,integer) IS 'Sets a segment''s sequence priority (lower first).';
COMMENT ON FUNCTION segments.set_owner(bigint[],regrole) IS 'Gives segments to another role, like ALTER ... OWNER TO: you must be allowed to change them and be a member of the new owner.';
COMMENT ON FUNCTION segments.register_related(text,text,regclass,text,text,text) IS 'Registers a one-to-many table of an entity (orders, events) with its foreign key, optional time column, and optional via: the related table whose primary key the foreign key references (a path, e.g. accounts, contacts, events). Admins only.';
COMMENT ON FUNCTION segments.estimate(jsonb) IS 'Simulates a definition: members per rule, nothing saved.';
COMMENT ON AGGREGATE segments.rb_agg(bigint) IS
    'The positions of the aggregated rows as a serialized Roaring bitmap (64-bit portable format).';
COMMENT ON FUNCTION segments.rb_agg_step(bytea,bigint) IS 'Transition function of rb_agg (its bytea state is an expanded object, changed in place).';
COMMENT ON FUNCTION segments.rb_agg_combine(bytea,bytea) IS 'Combine function of rb_agg (parallel workers, Citus shards).';
COMMENT ON FUNCTION segments.rb_agg_final(bytea) IS 'Final function of rb_agg: the serialized bitmap.';
COMMENT ON TABLE segments.definition_version IS 'Every definition, name, type and schedule each segment has had (see view definition_history).';
COMMENT ON COLUMN segments.definition_version.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.definition_version.version IS 'Version number, from 1.';
COMMENT ON COLUMN segments.definition_version.name IS 'Name at this version.';
COMMENT ON COLUMN segments.definition_version.definition IS 'Definition at this version; NULL: unchanged since the version before (see view definition_history, which shows it whole).';
COMMENT ON COLUMN segments.definition_version.type IS 'Type at this version.';
COMMENT ON COLUMN segments.definition_version.schedule IS 'Schedule at this version.';
COMMENT ON COLUMN segments.definition_version.changed_by IS 'Who made the change.';
COMMENT ON COLUMN segments.definition_version.changed_at IS 'When.';
COMMENT ON VIEW segments.definition_history IS 'Every definition, name, type and schedule change of every segment: who, when, old and new.';
COMMENT ON COLUMN segments.definition_history.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.definition_history.version IS 'Version number (restore_definition takes it).';
COMMENT ON COLUMN segments.definition_history.changed_at IS 'When.';
COMMENT ON COLUMN segments.definition_history.changed_by IS 'Who.';
COMMENT ON COLUMN segments.definition_history.old_name IS 'Name before (NULL for the first version).';
COMMENT ON COLUMN segments.definition_history.new_name IS 'Name after.';
COMMENT ON COLUMN segments.definition_history.old_definition IS 'Definition before.';
COMMENT ON COLUMN segments.definition_history.new_definition IS 'Definition after.';
COMMENT ON COLUMN segments.definition_history.old_type IS 'Type before.';
COMMENT ON COLUMN segments.definition_history.new_type IS 'Type after.';
COMMENT ON COLUMN segments.definition_history.old_schedule IS 'Schedule before.';
COMMENT ON COLUMN segments.definition_history.new_schedule IS 'Schedule after.';
COMMENT ON TABLE segments.limits IS 'Limits set with set_limit(), lasting across sessions (one row).';
COMMENT ON COLUMN segments.limits.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN segments.limits.max_active_segments IS 'The active-segment limit (NULL: the setting segments.max_active_segments).';
COMMENT ON COLUMN segments.segment_list.active_segments IS 'Active segments in the database.';
COMMENT ON COLUMN segments.segment_list.max_active_segments IS 'The active-segment limit in force.';
COMMENT ON FUNCTION segments.restore_definition(bigint, integer) IS 'Puts back the definition a segment had at a version of definition_history (recorded as a new version).';
COMMENT ON FUNCTION segments.members_at(bigint, timestamp with time zone) IS 'The keys of a segment''s members as they were after its last refresh at or before a time, within the history retention.';
COMMENT ON FUNCTION segments.freeze(bigint, text) IS 'Creates a static segment holding the current membership of another; returns its id.';
COMMENT ON FUNCTION segments.set_limit(integer) IS 'Sets the active-segment limit persistently (admins only); NULL goes back to the setting.';
COMMENT ON FUNCTION segments.explain_member(bigint, anyelement) IS 'Why a record (key in its own type) is or is not a member: rule by rule and condition by condition, with the value compared; the last row (path member) is the result and whether it is a member now.';
COMMENT ON FUNCTION segments.explain_member(bigint, text) IS 'Why a record (key as text) is or is not a member: rule by rule and condition by condition, with the value compared; the last row (path member) is the result and whether it is a member now.';
COMMENT ON FUNCTION segments.add_to_export(text, bigint[]) IS 'Adds segments (of the export''s entity) to an export, recording their usage, and rewrites it; returns how many were added.';
COMMENT ON FUNCTION segments.remove_from_export(text, bigint[]) IS 'Removes segments from an export with their usage, and rewrites it; returns how many were removed.';
COMMENT ON SCHEMA segments IS 'segments: rule-defined customer segments evaluated into Roaring bitmaps.';

COMMENT ON VIEW segments.activity IS 'Every running refresh, live application and cleanup, manual or scheduled, of any backend or scheduler of the cluster (with the preload).';
COMMENT ON COLUMN segments.activity.pid IS 'The backend or scheduler doing it.';
COMMENT ON COLUMN segments.activity.database IS 'Its database.';
COMMENT ON COLUMN segments.activity.backend_type IS 'client backend, or segments scheduler.';
COMMENT ON COLUMN segments.activity.role IS 'The role it runs as.';
COMMENT ON COLUMN segments.activity.kind IS 'refresh, live or cleanup.';
COMMENT ON COLUMN segments.activity.phase IS 'What it does now: loading, planning, scanning <table>, storing, sequences, exports.';
COMMENT ON COLUMN segments.activity.segments IS 'Its segments (the first 32).';
COMMENT ON COLUMN segments.activity.segments_done IS 'Segments done.';
COMMENT ON COLUMN segments.activity.segments_total IS 'Segments in this run.';
COMMENT ON COLUMN segments.activity.started_at IS 'When it started.';
COMMENT ON VIEW segments.schedulers IS 'The launcher''s view of every database it serves: its scheduler and what it does (with the preload).';
COMMENT ON COLUMN segments.schedulers.database IS 'The database.';
COMMENT ON COLUMN segments.schedulers.pid IS 'Its scheduler (NULL: none running).';
COMMENT ON COLUMN segments.schedulers.state IS 'waiting, starting, idle, running, no extension, extension outdated, withdrawn, or over max_schedulers.';
COMMENT ON COLUMN segments.schedulers.started_at IS 'When the scheduler started.';
COMMENT ON COLUMN segments.schedulers.last_pass_started_at IS 'When it last started a pass.';
COMMENT ON COLUMN segments.schedulers.last_pass_finished_at IS 'When it last finished a pass.';
COMMENT ON COLUMN segments.schedulers.last_error IS 'The last error a step of its passes logged.';
COMMENT ON COLUMN segments.schedulers.last_error_at IS 'When.';
COMMENT ON COLUMN segments.schedulers.doing IS 'What pg_stat_activity shows it running (for roles that may see it).';
COMMENT ON COLUMN segments.schedulers.launcher_pid IS 'The launcher.';
COMMENT ON VIEW segments.storage IS 'Every table the extension fills: rows, bytes, oldest row, and what bounds it.';
COMMENT ON COLUMN segments.storage.table_name IS 'The table, in schema segments, or ''slot <name>'': the WAL capture slot.';
COMMENT ON COLUMN segments.storage.rows IS 'Its rows.';
COMMENT ON COLUMN segments.storage.bytes IS 'Its size with indexes and TOAST; for the slot, the WAL it keeps.';
COMMENT ON COLUMN segments.storage.oldest IS 'Its oldest row, where rows age (NULL otherwise or when empty).';
COMMENT ON COLUMN segments.storage.retention IS 'What bounds it.';
COMMENT ON FUNCTION segments._activity() IS 'Running refreshes, live applications and cleanups from shared memory (internal; see view activity).';
COMMENT ON FUNCTION segments._schedulers() IS 'The launcher''s registry (internal; see view schedulers).';

-- Activation (SPEC 17).
COMMENT ON FUNCTION segments.split_bucket(bigint, text) IS 'A record''s bucket (0 to 99) in a split segment: the first four bytes of md5(''<segment>:<key>'') as an unsigned integer, modulo 100. The same everywhere, forever.';
COMMENT ON FUNCTION segments.split_group(bigint, text) IS 'A record''s group (key as text) in a split segment; NULL when the segment is not split. Says nothing of membership.';
COMMENT ON FUNCTION segments.split(bigint, jsonb) IS 'Splits a segment''s members into stable groups of whole percentages summing to 100, e.g. {"control": 10, "email": 90}; a record''s group depends only on the segment and its key.';
COMMENT ON FUNCTION segments.unsplit(bigint) IS 'Ends a segment''s split (refused while a segment selects one of its groups).';
COMMENT ON FUNCTION segments.create_priority_list(text, bigint[]) IS 'Creates a priority list (highest priority first): each member of any listed segment is assigned to the first it is a member of; returns its id.';
COMMENT ON FUNCTION segments.drop_priority_list(text) IS 'Drops a priority list (its owner or an admin; refused while a segment or an export uses it).';
COMMENT ON FUNCTION segments.breakdown(bigint, text, integer) IS 'The distribution of a column or trait among a segment''s members against the entity''s eligible records: one row per value (numbers and dates with more than n values: n ranges of about equal population), NULL as its own row, with shares and lift; read as the caller.';
COMMENT ON FUNCTION segments.create_feed(text, bigint[]) IS 'Creates a change feed of segments (owned by the caller): first everyone who is a member now as entered, then every entered and exited in increasing position; returns its id.';
COMMENT ON FUNCTION segments.read_feed(text, integer) IS 'The next changes of a feed after its last acknowledged position, at most max_rows; acknowledges nothing.';
COMMENT ON FUNCTION segments.ack_feed(text, bigint) IS 'Acknowledges a feed''s changes up to a position: they are never returned again.';
COMMENT ON FUNCTION segments.reset_feed(text) IS 'Starts a feed again from a snapshot of its segments'' members (after it fell behind segments.feed_retention).';
COMMENT ON FUNCTION segments.drop_feed(text) IS 'Drops a change feed (its owner or an admin).';
COMMENT ON VIEW segments.priority_assignment IS 'Every record a priority list assigns, with the one segment it goes to (the first listed segment it is a member of); current with every refresh and live apply.';
COMMENT ON TABLE segments.segment_split IS 'Split segments: group names in bucket order and the first bucket of each (internal; see segments.split()).';
COMMENT ON TABLE segments.priority_list IS 'Priority lists: segments of one entity, highest priority first (see create_priority_list).';
COMMENT ON TABLE segments.feed IS 'Change feeds: their segments, owner, start and the last acknowledged position (see create_feed).';
COMMENT ON TABLE segments.feed_batch IS 'The changes feeds read: per fed segment and transaction, entered and exited positions as bitmaps, numbered from first_position (internal).';
COMMENT ON TABLE segments.feed_clock IS 'The last position handed out to feed changes; writers hold its row until they commit, so positions follow commit order (internal).';
REVOKE SELECT ON segments.feed_batch, segments.feed_clock FROM segments_reader;
COMMENT ON COLUMN segments.segment_split.segment_id IS 'The split segment.';
COMMENT ON COLUMN segments.segment_split.groups IS 'Group names, in the byte order of their names (bucket order).';
COMMENT ON COLUMN segments.segment_split.lows IS 'The first bucket (0 to 99) of each group; a group ends where the next begins.';
COMMENT ON COLUMN segments.segment_split.percents IS 'The groups as asked, e.g. {"control": 10, "email": 90}.';
COMMENT ON COLUMN segments.segment_split.created_at IS 'When it was split.';
COMMENT ON COLUMN segments.priority_list.id IS 'List id.';
COMMENT ON COLUMN segments.priority_list.name IS 'List name.';
COMMENT ON COLUMN segments.priority_list.entity IS 'The entity of its segments.';
COMMENT ON COLUMN segments.priority_list.segments IS 'Its segments, highest priority first.';
COMMENT ON COLUMN segments.priority_list.owner IS 'The role that created it.';
COMMENT ON COLUMN segments.priority_list.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.feed.id IS 'Feed id.';
COMMENT ON COLUMN segments.feed.name IS 'Feed name.';
COMMENT ON COLUMN segments.feed.entity IS 'The entity of its segments.';
COMMENT ON COLUMN segments.feed.segments IS 'Its segments.';
COMMENT ON COLUMN segments.feed.owner IS 'The role that created it; only its members and admins read it.';
COMMENT ON COLUMN segments.feed.created_at IS 'When it was created.';
COMMENT ON COLUMN segments.feed.start_position IS 'Changes of its segments after this position are the feed''s (before it: its own snapshot).';
COMMENT ON COLUMN segments.feed.acked_position IS 'The last acknowledged position.';
COMMENT ON COLUMN segments.feed.acked_at IS 'When it was last acknowledged.';
COMMENT ON COLUMN segments.feed.lost_at IS 'When retention removed changes it had not acknowledged (read_feed fails until reset_feed); NULL otherwise.';
COMMENT ON COLUMN segments.feed_batch.first_position IS 'The position of its first change; the entered (ascending), then the exited, follow.';
COMMENT ON COLUMN segments.feed_batch.count IS 'How many changes it holds.';
COMMENT ON COLUMN segments.feed_batch.segment_id IS 'The segment.';
COMMENT ON COLUMN segments.feed_batch.feed_id IS 'NULL: a change of the segment, for every feed of it; else one feed''s snapshot.';
COMMENT ON COLUMN segments.feed_batch.entered IS 'Bitmap of the positions of the records that entered.';
COMMENT ON COLUMN segments.feed_batch.exited IS 'Bitmap of the positions of the records that exited.';
COMMENT ON COLUMN segments.feed_batch.at IS 'When the writing transaction started.';
COMMENT ON COLUMN segments.feed_clock.singleton IS 'Always true: one row.';
COMMENT ON COLUMN segments.feed_clock.last_position IS 'The last position handed out.';
COMMENT ON COLUMN segments.priority_assignment.list IS 'The priority list.';
COMMENT ON COLUMN segments.priority_assignment.key IS 'The record''s key, as text.';
COMMENT ON COLUMN segments.priority_assignment.segment_id IS 'The segment it is assigned to.';
COMMENT ON COLUMN segments.export.priority_list IS 'A priority list''s name: the target holds each record that list assigns, once, under its segment (NULL: every member of the segments).';
